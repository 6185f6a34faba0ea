"""``contsup bench``: peak memory and speed of local learning against e2e and checkpointing."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from contsup.cli.common import (
    UserError,
    app,
    int_list,
    print_error,
    stderr,
    stdout,
    user_errors,
)

__all__ = ["bench"]


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="timm model name")],
    k: Annotated[str, typer.Option("--k", help="segment counts, comma-separated")] = "2,4,8,16",
    context: Annotated[str, typer.Option(help="context modes, comma-separated")] = "R0,E,R1,R1E",
    batch_size: Annotated[int, typer.Option()] = 128,
    input_size: Annotated[
        tuple[int, int, int] | None, typer.Option(help="C H W (default: the model's own)")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    steps: Annotated[
        int, typer.Option(help="timed steps per configuration, one per round of all")
    ] = 5,
    num_classes: Annotated[int, typer.Option(help="classes of the synthetic labels")] = 10,
    objective: Annotated[str, typer.Option(help="what the cuts balance")] = "memory",
    aux: Annotated[str, typer.Option(help="aux design: sized | scaled | paper")] = "sized",
    head: Annotated[str, typer.Option(help="local head, e.g. 1c2f")] = "1c2f",
    momentum_heads: Annotated[
        str,
        typer.Option(help="momentum heads of the context rows: auto, off or a decay (0.99)"),
    ] = "auto",
    compile: Annotated[
        bool, typer.Option("--compile", help="also each local row with every unit compiled")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="last stdout line is one JSON object")
    ] = False,
) -> None:
    """Measure peak memory and speed of local learning against e2e and checkpointing.

    Per K: end-to-end, gradient checkpointing at the same number of segments, the
    floor (R0 with a GAP+Linear head), and each context mode with the aux design.
    """
    with user_errors():
        import timm

        from contsup.bench import run_bench
        from contsup.devices import check_device
        from contsup.models.lookup import create_model
        from contsup.momentum_heads import momentum_option
        from contsup.oom import StepOutOfMemory
        from contsup.tables import print_bench_table

        ks, contexts = _checked_options(k, context, aux, head, objective, batch_size, steps)
        momentum = momentum_option(momentum_heads)
        check_device(device)
        size = tuple(input_size or create_model(model).pretrained_cfg["input_size"])
        report = stderr if as_json else stdout

        def on_built(row):
            report.print(
                f"{row.mode:10s} k={row.k:<3d} {row.context or '-':5s} {row.head or '-':5s} "
                f"peak {row.peak_bytes / 2**20:9.1f} MiB  "
                f"predicted {row.predicted_peak_bytes / 2**20:9.1f} MiB",
                highlight=False,
            )

        def make_model():
            return timm.create_model(model, num_classes=num_classes, in_chans=size[0])

        try:
            rows = run_bench(
                make_model,
                ks=ks,
                contexts=contexts,
                batch_size=batch_size,
                input_size=size,
                num_classes=num_classes,
                device=device,
                steps=steps,
                objective=objective,
                aux=aux,
                head=head,
                momentum_heads=momentum,
                compile=compile,
                on_built=on_built,
            )
        except StepOutOfMemory as error:
            options = dict(input_size=size, context=contexts[-1], aux=aux, head=head)
            print_error(_oom_message(error, model, batch_size, device, options, num_classes))
            raise typer.Exit(2) from None
        result = {
            **_machine(device),
            "model": model,
            "batch_size": batch_size,
            "input_size": list(size),
            "objective": objective,
            "aux": aux,
            "momentum_heads": momentum,
            "rows": [asdict(r) for r in rows],
        }
        if as_json:
            print(json.dumps(result))
        else:
            print_bench_table(stdout, result)


def _checked_options(
    k: str, context: str, aux: str, head: str, objective: str, batch_size: int, steps: int
) -> tuple[list[int], list[str]]:
    """The K values and context modes asked for; UserError for any option that is wrong."""
    import partitioner
    from contsup.auxiliary import get_design
    from contsup.context import parse_context
    from contsup.heads import parse_head

    ks = int_list(k, "--k")
    contexts = [str(parse_context(c)) for c in context.split(",")]
    get_design(aux)
    parse_head(head)
    partitioner.check_objective(objective)
    if objective == "time":  # predictions come from the meta device, which has no clock
        raise UserError("bench balances cuts by flops, memory or params, not time")
    if batch_size < 2 or steps < 1:
        raise UserError("--batch-size must be at least 2 and --steps at least 1")
    return ks, contexts


def _machine(device: str) -> dict[str, str]:
    """What the numbers were measured on: the device's name and torch's version."""
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return {"device": name, "torch": torch.__version__}


def _oom_message(error, model: str, batch_size: int, device: str, options: dict, classes: int):
    """The one sentence for a CUDA out-of-memory error in a measured step."""
    from contsup.devices import device_memory
    from contsup.memory_plan import oom_sentence

    memory = device_memory(device)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    plan_options = dict(options, device=kind, num_classes=classes)
    return oom_sentence(
        error, model=model, batch_size=batch_size, device_bytes=memory, plan_options=plan_options
    )
