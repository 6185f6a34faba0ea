"""``python -m contsup.cli``: the command line."""

from contsup.cli import main

main()
