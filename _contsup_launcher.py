"""The ``contsup`` console script: the command line, importing contsup only to run a command.

``import contsup`` registers the CIFAR ResNets in timm, so it imports torch and
timm: seconds, which ``contsup --help``, ``contsup train --help`` and a mistyped
option should not cost. ``contsup.cli`` itself needs only typer and rich. This
module lives outside the package so that importing it does not run the
package's ``__init__``: it puts ``contsup`` in ``sys.modules`` with its
``__init__`` not yet run, imports ``contsup.cli``, and runs the ``__init__``
just before a command's own code. Help and usage errors never import torch, and
each command runs with contsup imported as ``import contsup`` does, as before.
``python -m contsup`` (torchrun's ``-m contsup``) imports the package first, as
any ``-m`` does, and then runs the same command line.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable

__all__ = ["main"]

PACKAGE = "contsup"


def main() -> None:
    """Run the ``contsup`` command line; the console script's entry point.

    Example::

        $ contsup --help          # typer and rich only: a fraction of a second
        $ contsup models resnet1  # imports contsup first (torch, timm, the CIFAR ResNets)
    """
    import_package = _defer_package_init()
    from contsup.cli import app

    for command in app.registered_commands:
        command.callback = _after(import_package, command.callback)
    app()


def _defer_package_init() -> Callable[[], None]:
    """Put the ``contsup`` package in ``sys.modules`` without running its ``__init__``,
    so its submodules import alone; return what runs the ``__init__``, once."""
    if PACKAGE in sys.modules:  # imported already: nothing left to defer
        return lambda: None
    spec = importlib.util.find_spec(PACKAGE)
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package  # what the import system does before running a module
    return functools.cache(lambda: spec.loader.exec_module(package))


def _after(first: Callable[[], None], command: Callable) -> Callable:
    """``command``, calling ``first()`` before it; typer reads the wrapped signature."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        first()
        return command(*args, **kwargs)

    return run


if __name__ == "__main__":
    main()
