"""``contsup plot``: a run's test accuracy by segment and by epoch, as an image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contsup.cli.common import app, stdout, user_errors

__all__ = ["plot"]


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (contsup train --out)")],
    out: Annotated[Path | None, typer.Option(help="image to write")] = None,
) -> None:
    """Draw test accuracy by segment and by epoch from a run's metrics.jsonl."""
    with user_errors():
        from contsup.plots import plot_run

        written = plot_run(run_dir, out or run_dir / "accuracy.png")
    stdout.print(f"wrote {written}", highlight=False)
