"""``python -m contsup``: the command line, also as torchrun's module
(``torchrun --nproc-per-node 2 -m contsup train ... --pipeline 2``)."""

from contsup.cli import main

main()
