"""``contsup split``: where a model will be cut, and what its segments cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from contsup.cli.common import UserError, app, stdout, user_errors

__all__ = ["split"]


@app.command()
def split(
    model: Annotated[
        str, typer.Argument(help="timm model name, e.g. resnet110 or vit_tiny_patch16_224")
    ],
    k: Annotated[int, typer.Option("--k", help="number of segments")] = 4,
    objective: Annotated[str, typer.Option(help="flops | memory | params | time")] = "flops",
    input_size: Annotated[
        tuple[int, int, int] | None,
        typer.Option(help="C H W of one input (default: the model's own)"),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="batch size for activation bytes (and --json FLOPs)")
    ] = 32,
    max_boundary_tensors: Annotated[
        int, typer.Option(help="allow cuts where this many tensors cross")
    ] = 1,
    context: Annotated[
        str | None,
        typer.Option(
            help="balance and report with this context mode's heads and bridges, e.g. R1E"
        ),
    ] = None,
    aux: Annotated[
        str, typer.Option(help="aux design with --context: sized | scaled | paper")
    ] = "sized",
    head: Annotated[str, typer.Option(help="local head with --context, e.g. 1c2f")] = "1c2f",
    momentum_heads: Annotated[
        str, typer.Option(help="with --context: auto | off | a decay (0.99), as wrap takes it")
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    save: Annotated[Path | None, typer.Option(help="write the plan as JSON here")] = None,
    plot: Annotated[Path | None, typer.Option(help="save a cost-along-depth plot (PNG)")] = None,
) -> None:
    """Show where MODEL will be cut into K balanced segments."""
    with user_errors():
        from contsup.atomic import write_text_atomic
        from contsup.momentum_heads import momentum_option
        from contsup.planning import plan_split, split_summary
        from contsup.tables import print_split_table

        if k < 1:
            raise UserError(f"--k must be at least 1, got {k}")
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        plan = plan_split(
            model,
            k=k,
            objective=objective,
            input_size=input_size,
            batch_size=batch_size,
            max_boundary_tensors=max_boundary_tensors,
            context=context,
            aux=aux,
            head=head,
            momentum_heads=momentum_option(momentum_heads),
        )
        part = plan.partition
        if save:
            write_text_atomic(save, part.to_json(model=model))
        if plot:
            from partitioner.plot import plot_costs

            plot_costs(plan.analysis, part, plot, title=f"{model}: K={k} by {objective}")
        summary = split_summary(plan)
        if as_json:
            print(json.dumps(summary))
        else:
            print_split_table(stdout, summary, part, batch_size)
