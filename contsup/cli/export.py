"""``contsup export``: a saved run's inference model as safetensors, ONNX or pt2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contsup.cli.common import app, stdout, user_errors

__all__ = ["export"]


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (contsup train --out)")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors | onnx | pt2")] = "safetensors",
    out: Annotated[Path | None, typer.Option(help="file to write (default: in RUN_DIR)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing file")] = False,
    best: Annotated[
        bool, typer.Option("--best", help="the best epoch's weights, not the last's")
    ] = False,
    raw_input: Annotated[
        bool,
        typer.Option(
            "--raw-input/--normalized-input",
            help="the model takes images in [0, 1] and normalises them itself (default), "
            "or normalised images as in training",
        ),
    ] = True,
) -> None:
    """Write a saved run's inference model (segments and bridges, no heads) to a file."""
    with user_errors():
        from contsup.runs import EXPORT_FORMATS, ExportError, export_run, open_run

        if fmt not in EXPORT_FORMATS:
            raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        target = out or run_dir / f"model.{fmt}"
        if target.exists() and not force:  # before the slow part
            raise ExportError(f"{target} exists; pass --force to replace it")
        run = open_run(run_dir, best=best)
        written = export_run(run, fmt, target, force=force, raw_input=raw_input)
    mean, std = (", ".join(f"{v:.4f}" for v in values) for values in (run.info.mean, run.info.std))
    takes = "images in [0, 1]" if raw_input else f"images normalised by mean ({mean}), std ({std})"
    stdout.print(f"wrote {written}; it takes {takes}", highlight=False, soft_wrap=True)
