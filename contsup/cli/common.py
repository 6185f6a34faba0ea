"""What every command shares: the typer app, the consoles, and how user errors end a command.

User errors (``ContsupError``, ``PartitionError``, ``UserError``) print one sentence
on stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from contsup.errors import ContsupError

__all__ = ["UserError", "app", "int_list", "print_error", "stderr", "stdout", "user_errors"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Greedy local learning with context supply for any timm model.",
)
# Piped output (files, CI logs, README snippets) gets room for full node names.
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True)


class UserError(ContsupError):
    """A mistake in a command's options; reported in one sentence, exit code 2."""


def print_error(error: Exception) -> None:
    """One line on stderr: ``error:`` and the message, printed as is (no rich markup)."""
    stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user error raised inside into its one-line report and exit code 2.

    Example::

        with user_errors():
            raise UserError("--k must be at least 1, got 0")  # prints it, exits 2
    """
    # Imported here: --help and usage errors must not wait for torch.
    import partitioner

    try:
        yield
    except (ContsupError, partitioner.PartitionError) as error:
        print_error(error)
        raise typer.Exit(2) from None


def int_list(text: str, option: str) -> list[int]:
    """Comma-separated integers >= 1, as ``--k 2,4,8`` takes them; UserError otherwise.

    Example::

        >>> int_list("2,4,8", "--k")
        [2, 4, 8]
    """
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{option} takes integers >= 1, got {text!r}")
    return values
