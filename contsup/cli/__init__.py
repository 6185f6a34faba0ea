"""The ``contsup`` command line: ``split``, ``plan``, ``train``, ``bench``, ``eval``,
``export``, ``plot`` and ``models``, one module each.

User errors (unknown model, bad K, an input size the model rejects, a model fx
cannot trace, missing data, a bad recipe, a corrupt checkpoint) print one
sentence and exit with code 2, never a traceback.

The commands are thin: their work lives in the library (``contsup.planning``,
``contsup.recipes``, ``contsup.evaluation``, ``contsup.tables``, ...), imported
when a command runs, so that ``--help`` needs only typer and rich.
"""

# Each module adds its command to the app; their order is the order of --help.
from contsup.cli import split, plan, train, bench, evaluate, export, plot, models  # noqa: F401, I001
from contsup.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Run the command line (``python -m contsup.cli``, ``python -m contsup``).

    Example::

        $ python -m contsup.cli split resnet110 --k 16
    """
    from contsup.cpu_allocator import keep_freed_memory

    keep_freed_memory()  # large CPU tensors stop costing page faults at every step
    app()
