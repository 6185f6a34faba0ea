"""``contsup eval``: test accuracy of a saved run's model and of each local head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from contsup.cli.common import app, stdout, user_errors

__all__ = ["evaluate"]


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (contsup train --out)")],
    dataset: Annotated[
        str | None, typer.Option(help="another dataset of the same shape and classes")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="where datasets live")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="default: the run's")] = None,
    best: Annotated[
        bool, typer.Option("--best", help="the best epoch's weights, not the last's")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Test accuracy of a saved run's model, and of each local head, from its last checkpoint."""
    with user_errors():
        from contsup.evaluation import evaluate_run

        result = evaluate_run(
            run_dir,
            dataset=dataset,
            data_dir=data_dir,
            device=device,
            batch_size=batch_size,
            best=best,
        )
    if as_json:
        print(json.dumps(result))
        return
    stdout.print(
        f"{run_dir} (epoch {result['epoch']}) on {result['dataset']}: test accuracy "
        f"[bold]{result['test_accuracy']:.4f}[/bold] over {result['test_images']} images",
        highlight=False,
    )
    for i, value in enumerate(result["head_accuracies"]):
        stdout.print(f"  head {i} (after segment {i}): {value:.4f}", highlight=False)
