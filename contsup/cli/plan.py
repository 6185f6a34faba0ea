"""``contsup plan``: the fewest segments whose training step fits a memory budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from contsup.cli.common import app, stdout, user_errors

__all__ = ["plan"]


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="timm model name")],
    memory: Annotated[str, typer.Option(help="the budget, e.g. 24GiB or 512MiB")],
    batch_size: Annotated[int, typer.Option(help="images per training step")],
    input_size: Annotated[
        tuple[int, int, int] | None, typer.Option(help="C H W (default: the model's own)")
    ] = None,
    context: Annotated[str, typer.Option(help="context mode training will use")] = "E",
    aux: Annotated[str, typer.Option(help="aux design: sized | scaled | paper")] = "sized",
    head: Annotated[str, typer.Option(help="local head, e.g. 1c2f")] = "1c2f",
    momentum_heads: Annotated[
        str, typer.Option(help="as training will use them: auto | off | a decay (0.99)")
    ] = "auto",
    optimizer: Annotated[str, typer.Option(help="sgd (momentum) | adamw")] = "sgd",
    amp: Annotated[str | None, typer.Option(help="bf16 (estimated)")] = None,
    device: Annotated[str, typer.Option(help="cuda (adds an allocator margin) | cpu")] = "cuda",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    save: Annotated[
        Path | None, typer.Option(help="write the plan here, for `contsup train --plan`")
    ] = None,
) -> None:
    """The fewest segments (K) whose predicted training step fits --memory at --batch-size.

    Beside it: end-to-end training and gradient checkpointing at the same cuts, the
    largest batch that fits at K, and the least memory any K could need. Predicted on
    the meta device: nothing runs.
    """
    with user_errors():
        from contsup.atomic import write_text_atomic
        from contsup.memory_plan import plan as make_plan
        from contsup.momentum_heads import momentum_option
        from contsup.tables import print_memory_plan

        result = make_plan(
            model,
            memory=memory,
            batch_size=batch_size,
            input_size=input_size,
            context=context,
            aux=aux,
            head=head,
            momentum_heads=momentum_option(momentum_heads),
            optimizer=optimizer,
            amp=amp,
            device=device,
        )
        if save:
            write_text_atomic(save, result.to_json())
        if as_json:
            print(json.dumps(result.to_dict()))
        else:
            print_memory_plan(stdout, result)
