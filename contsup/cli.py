"""The ``contsup`` command line: ``split``, ``train``, ``bench``, ``eval``, ``export``,
``plot`` and ``models``.

User errors (unknown model, bad K, an input size the model rejects, a model fx
cannot trace, missing data, a bad recipe, a corrupt checkpoint) print one
sentence and exit with code 2, never a traceback.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contsup.atomic import write_text_atomic

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Greedy local learning with context supply for any timm model.",
)
# Piped output (files, CI logs, README snippets) gets room for full node names.
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True)
PROGRESS_SECONDS = 30.0  # how often a run writes a progress line when not on a terminal


class UserError(Exception):
    """A mistake in what the user asked for; reported in one sentence, exit code 2."""


def print_error(error: Exception) -> None:
    """One line on stderr: ``error:`` and the message, printed as is (no rich markup)."""
    stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)


@contextmanager
def user_errors():
    import partitioner
    from contsup.errors import ContsupError

    try:
        yield
    except (UserError, ContsupError, partitioner.PartitionError) as error:
        print_error(error)
        raise typer.Exit(2) from None


def check_model_name(name: str) -> None:
    """Raise UserError, with the closest names, unless timm knows ``name``."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `contsup models` lists them"
        raise UserError(f"unknown model '{name}'{hint}")


def check_device(device: str) -> None:
    """Raise UserError when a CUDA device is asked for on a machine without one."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but this machine has no CUDA GPU")


def create_model(name: str, *, meta: bool = True, input_size=None):
    """A timm model by name, built on the meta device when it allows (no memory, no init);
    for ``input_size`` (C, H, W) its stem takes C channels, as timm's ``in_chans``."""
    import timm
    import torch

    check_model_name(name)
    kwargs = {"in_chans": input_size[0]} if input_size else {}
    if not meta:
        return timm.create_model(name, **kwargs)
    try:
        with torch.device("meta"):
            return timm.create_model(name, **kwargs)
    except Exception:  # some models compute Python numbers from tensors while building
        return timm.create_model(name, **kwargs)


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
    aux: Annotated[str, typer.Option(help="aux design with --context: scaled | paper")] = "scaled",
    head: Annotated[str, typer.Option(help="local head with --context, e.g. 1c2f")] = "1c2f",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    save: Annotated[Path | None, typer.Option(help="write the plan as JSON here")] = None,
    plot: Annotated[Path | None, typer.Option(help="save a cost-along-depth plot (PNG)")] = None,
) -> None:
    """Show where MODEL will be cut into K balanced segments."""
    with user_errors():
        import torch

        import partitioner

        if k < 1:
            raise UserError(f"--k must be at least 1, got {k}")
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        partitioner.check_objective(objective)
        # timing needs real weights
        net = create_model(model, meta=objective != "time", input_size=input_size)
        size = tuple(input_size or net.pretrained_cfg["input_size"])
        device = next(net.parameters(), torch.empty(0)).device
        x = torch.zeros((batch_size, *size), device=device)
        analysis = partitioner.analyze(
            net, x, measure_time=objective == "time", max_boundary_tensors=max_boundary_tensors
        )
        config = split_aux_config(net, x, context, aux, head) if context is not None else None
        hook = None
        if config is not None and objective != "time":
            from contsup.learner import balance_hook

            hook = balance_hook(net, x, objective, config)
        part = analysis.partition(k, objective, extra_cost=hook)
        if save:
            write_text_atomic(save, part.to_json(model=model))
        if plot:
            from partitioner.plot import plot_costs

            plot_costs(analysis, part, plot, title=f"{model}: K={k} by {objective}")
        summary = split_summary(model, part)
        if config is not None:
            add_aux_budget(summary, net, part, config)
        if as_json:
            print(json.dumps(summary))
        else:
            print_split_table(summary, part, batch_size)


def split_summary(model: str, part) -> dict:
    """The ``split --json`` object."""
    return {
        "model": model,
        "k": part.k,
        "objective": part.objective,
        "imbalance": part.imbalance,
        "segments": [
            {
                "index": i,
                "first_node": s.first_node,
                "last_node": s.last_node,
                "params": s.params,
                "flops": s.flops,
                "activation_bytes": s.activation_bytes,
                "output_shape": list(s.output_shape) if s.output_shape else None,
            }
            for i, s in enumerate(part.stats)
        ],
    }


def split_aux_config(net, x, context: str, aux: str, head: str):
    """The ``AuxConfig`` that ``split --context`` prices, as ``wrap`` would build it."""
    from contsup.learner import aux_config

    try:
        classes = getattr(net, "num_classes", 0) or 1000
        return aux_config(net, x, context=context, aux=aux, head=head, num_classes=classes)
    except ValueError as error:
        raise UserError(str(error)) from error


def add_aux_budget(summary: dict, net, part, config) -> None:
    """Add each segment's aux parameters, FLOPs and saved bytes (its head and input bridge)."""
    from contsup.budget import aux_budget
    from contsup.geometry import geometry_of

    try:
        geometries = [geometry_of(b.tensors[0], net) for b in part.boundaries]
    except ValueError as error:
        raise UserError(str(error)) from error
    budget = aux_budget(config, geometries, part.stats, part.input_shape[0])
    summary.update(context=str(config.mode), aux=config.design, head=config.head)
    summary["aux_fractions"] = budget.fractions()
    for row, head, bridge in zip(summary["segments"], budget.heads, budget.bridges):
        row.update(
            head_params=head.params,
            head_flops=head.flops,
            head_saved_bytes=head.saved_bytes,
            bridge_params=bridge.params,
            bridge_flops=bridge.flops,
            bridge_saved_bytes=bridge.saved_bytes,
        )


def print_split_table(summary: dict, part, batch_size: int) -> None:
    table = Table(
        title=f"{summary['model']} in {summary['k']} segments, balanced by {summary['objective']}"
    )
    with_aux = "context" in summary
    columns = (
        "#",
        "first node",
        "last node",
        "params",
        "GFLOPs/img",
        f"act. MiB @{batch_size}",
        *(("aux params", "aux GFLOPs/img", f"aux MiB @{batch_size}") if with_aux else ()),
        "output",
    )
    for column in columns:
        table.add_column(
            column, justify="left" if "node" in column or column == "output" else "right"
        )
    outputs = [
        ", ".join(f"{'x'.join(map(str, t.shape))} {t.layout}" for t in b.tensors)
        for b in part.boundaries
    ]
    last = part.stats[-1].output_shape
    outputs.append("x".join(map(str, last)) if last else "-")
    for row, output in zip(summary["segments"], outputs):
        table.add_row(
            str(row["index"]),
            row["first_node"],
            row["last_node"],
            f"{row['params']:,}",
            f"{row['flops'] / batch_size / 1e9:.3f}",
            f"{row['activation_bytes'] / 2**20:.2f}",
            *(
                (
                    f"{row['head_params'] + row['bridge_params']:,}",
                    f"{(row['head_flops'] + row['bridge_flops']) / batch_size / 1e9:.4f}",
                    f"{(row['head_saved_bytes'] + row['bridge_saved_bytes']) / 2**20:.2f}",
                )
                if with_aux
                else ()
            ),
            output,
        )
    stdout.print(table)
    if with_aux:
        f = summary["aux_fractions"]
        stdout.print(
            f"context {summary['context']}, aux {summary['aux']}, head {summary['head']}: heads "
            f"and bridges add {f['params']:.1%} parameters, {f['flops']:.1%} forward FLOPs and "
            f"{f['saved_bytes']:.1%} saved bytes to the backbone (aux: segment k's head and "
            "the bridge into it)"
        )
    stdout.print(
        f"imbalance (max/mean {summary['objective']}): [bold]{summary['imbalance']:.3f}[/bold]; "
        "forward FLOPs per image (training ~3x); activation = bytes saved for backward"
    )


@app.command()
def train(
    model: Annotated[str | None, typer.Argument(help="timm model name (or from --recipe)")] = None,
    k: Annotated[int | None, typer.Option("--k", help="number of segments")] = None,
    context: Annotated[str | None, typer.Option(help="R0 | E | Rn | RnE")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="cifar10 | cifar100 | svhn | stl10 | digits | mnist[:SIZE] | fashion_mnist[:SIZE]"
            " | synthetic[:CxHxW] | imagefolder:PATH"
        ),
    ] = None,
    recipe: Annotated[Path | None, typer.Option(help="YAML recipe (recipes/)")] = None,
    run: Annotated[str | None, typer.Option(help="only this run of a multi-run recipe")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    schedule: Annotated[
        str | None,
        typer.Option(help="cosine (per step, the default) | paper (the reference's, per epoch)"),
    ] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option(help="default: a sixteenth of the run")
    ] = None,
    aux: Annotated[
        str | None, typer.Option(help="heads and bridges: scaled (default) | paper")
    ] = None,
    head: Annotated[str | None, typer.Option(help="local head, e.g. 1c2f")] = None,
    local_loss: Annotated[str | None, typer.Option(help="ce | contrast")] = None,
    objective: Annotated[str | None, typer.Option(help="what the cuts balance")] = None,
    cuts: Annotated[
        str | None,
        typer.Option(help="cut after these nodes, comma-separated (K follows from them)"),
    ] = None,
    plan: Annotated[
        str | None, typer.Option(help="cut where a plan from `contsup split --save` says")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    amp: Annotated[str | None, typer.Option(help="bf16")] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last", help="NHWC memory")
    ] = None,
    compile: Annotated[
        bool | None, typer.Option("--compile", help="torch.compile each part")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="where datasets live")] = None,
    download: Annotated[bool | None, typer.Option("--download", help="fetch missing data")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers (large datasets)")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads (default: the idle cores); results repeat at the same count"
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="run directory")] = None,
    pipeline: Annotated[
        int | None,
        typer.Option(help="pipeline stages, one process each (under torchrun; the rest is dp)"),
    ] = None,
    pipeline_balance: Annotated[
        str | None, typer.Option(help="what stages balance: time (measured) | cost")
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="TensorBoard event files in --out (default: when tensorboard is installed)",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the checkpoint in --out")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="last stdout line is one JSON object")
    ] = False,
) -> None:
    """Train MODEL with greedy local learning and context supply."""
    given = {name: value for name, value in locals().items() if value is not None}
    for name in ("recipe", "run", "resume", "as_json"):
        given.pop(name, None)
    if cuts is not None:  # the command line's cuts replace a recipe's plan, and back
        given.update(cuts=[c.strip() for c in cuts.split(",") if c.strip()], plan=None)
    if plan is not None:
        given["cuts"] = None
    with user_errors():
        from contsup.recipes import check_fields, load_recipe

        if amp not in (None, "bf16"):
            raise UserError(f"--amp takes bf16, got {amp!r}")
        book = load_recipe(recipe) if recipe else None
        runs = book.runs if book else [("", {})]
        if run is not None:
            runs = [r for r in runs if r[0] == run]
            if not runs:
                names = ", ".join(n for n, _ in book.runs) if book else "none without --recipe"
                raise UserError(f"no run named {run!r}; runs: {names}")
        check_fields(given, "command line")
        for name, overrides in runs:
            values = {**(book.base if book else {}), **overrides, **given}
            if book and name:  # each named run in its own directory, under --out too
                values["out"] = str(Path(values.get("out") or Path("runs") / recipe.stem) / name)
            summary = _train_one(values, resume, as_json, label=name)
            if as_json and summary is not None:
                print(json.dumps(summary))


def _train_one(values: dict, resume: bool, as_json: bool, label: str) -> dict | None:
    """Train one run; None on ranks other than global rank 0, which do not report."""
    import os

    from rich.progress import BarColumn, Progress, TextColumn

    from contsup.distributed import RankLost
    from contsup.trainer import TrainConfig, TrainingDiverged, train

    config = TrainConfig(**values)
    check_model_name(config.model)
    check_device(config.device)
    main = os.environ.get("RANK", "0") == "0"
    report = stderr if as_json else stdout
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  {task.fields[ips]:.0f} img/s"),
        console=stderr,
        transient=True,
        disable=not main,
    )
    task = progress.add_task(f"{label or config.model} epoch", total=None, loss=0.0, ips=0.0)
    if main:
        report.print(_run_line(config, label), highlight=False, soft_wrap=True)
    # A log file or a cluster job sees no progress bar: a plain line every 30 s instead.
    plain = not stderr.is_terminal
    last_line = [time.monotonic()]

    def on_step(step, steps, losses, images_per_s):
        progress.update(task, completed=step, total=steps, loss=losses[-1], ips=images_per_s)
        if plain and main and time.monotonic() - last_line[0] >= PROGRESS_SECONDS:
            last_line[0] = time.monotonic()
            report.print(
                f"{label + ' ' if label else ''}step {step}/{steps}  loss {losses[-1]:.4f}  "
                f"{images_per_s:.0f} img/s",
                highlight=False,
            )

    def on_epoch(record):
        report.print(
            f"{label + ' ' if label else ''}epoch {record.epoch}/{config.epochs}  "
            f"loss {record.train_loss:.4f}  test acc {record.test_accuracy:.4f}  "
            f"lr {record.lr:.4g}  {record.images_per_s:.0f} img/s  {record.seconds:.1f}s",
            highlight=False,
        )

    try:
        with progress:
            summary = train(config, resume=resume, on_step=on_step, on_epoch=on_epoch)
    except (TrainingDiverged, RankLost) as error:
        print_error(error)
        raise typer.Exit(1) from None
    except ValueError as error:  # wrap's checks of context, head, loss and decoder
        raise UserError(str(error)) from error
    if not main:
        return None
    report.print(
        f"test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']} epochs; "
        f"run in {summary['out_dir']}",
        highlight=False,
    )
    return summary


def _run_line(config, label: str) -> str:
    """What a run is about to do, printed before anything slow starts."""
    from contsup.trainer import default_threads, resolve_device

    device = resolve_device(config.device)
    threads = f" with {config.threads or default_threads()} threads" if device.type == "cpu" else ""
    cut = f"K={config.k}"
    if config.cuts:
        cut = f"{len(config.cuts) + 1} segments at given cuts"
    elif config.plan:
        cut = f"cut as {config.plan} says"
    return (
        f"{label + ': ' if label else ''}{config.model} {cut}, context {config.context}, "
        f"aux {config.aux}, on {config.dataset}: {config.epochs} epochs of batch "
        f"{config.batch_size}, lr {config.lr} ({config.schedule}), on {device}{threads}; "
        f"run in {config.out_dir()}"
    )


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{option} takes integers >= 1, got {text!r}")
    return values


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
    steps: Annotated[int, typer.Option(help="timed steps per configuration")] = 5,
    num_classes: Annotated[int, typer.Option(help="classes of the synthetic labels")] = 10,
    objective: Annotated[str, typer.Option(help="what the cuts balance")] = "memory",
    aux: Annotated[str, typer.Option(help="aux design: scaled | paper")] = "scaled",
    head: Annotated[str, typer.Option(help="local head, e.g. 1c2f")] = "1c2f",
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
        import torch

        import partitioner
        from contsup.auxiliary import get_design
        from contsup.bench import run_bench
        from contsup.context import parse_context
        from contsup.heads import parse_head

        ks = _int_list(k, "--k")
        try:
            contexts = [str(parse_context(c)) for c in context.split(",")]
            get_design(aux)
            parse_head(head)
        except ValueError as error:
            raise UserError(str(error)) from None
        partitioner.check_objective(objective)
        if objective == "time":  # predictions come from the meta device, which has no clock
            raise UserError("bench balances cuts by flops, memory or params, not time")
        if batch_size < 2 or steps < 1:
            raise UserError("--batch-size must be at least 2 and --steps at least 1")
        check_device(device)
        size = tuple(input_size or create_model(model).pretrained_cfg["input_size"])
        report = stderr if as_json else stdout

        def on_row(row):
            report.print(
                f"{row.mode:10s} k={row.k:<3d} {row.context or '-':5s} {row.head or '-':5s} "
                f"peak {row.peak_bytes / 2**20:9.1f} MiB  "
                f"predicted {row.predicted_peak_bytes / 2**20:9.1f} MiB  "
                f"{row.step_time_s * 1e3:8.1f} ms/step",
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
                on_row=on_row,
            )
        except ValueError as error:
            raise UserError(str(error)) from error
        result = {
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
            "torch": torch.__version__,
            "model": model,
            "batch_size": batch_size,
            "input_size": list(size),
            "objective": objective,
            "aux": aux,
            "rows": [asdict(r) for r in rows],
        }
        if as_json:
            print(json.dumps(result))
        else:
            print_bench_table(result)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_bench_table(result: dict) -> None:
    rows = result["rows"]
    e2e = next(r for r in rows if r["mode"] == "e2e")
    table = Table(
        title=f"{result['model']}, batch {result['batch_size']}, {result['device']}, "
        f"torch {result['torch']}, aux {result['aux']}"
    )
    for column in (
        "mode",
        "K",
        "context",
        "head",
        "peak MiB",
        "x e2e",
        "x floor",
        "activation MiB",
        "predicted MiB",
        "ms/step",
        "x e2e ",
        "aux params",
        "aux FLOPs",
    ):
        table.add_column(
            column, justify="left" if column in ("mode", "context", "head") else "right"
        )
    floors = {r["k"]: r for r in rows if r["mode"] == "floor"}
    for r in rows:
        floor = floors.get(r["k"]) if r["mode"] in ("floor", "local") else None
        table.add_row(
            r["mode"],
            str(r["k"]),
            r["context"] or "-",
            r["head"] or "-",
            f"{r['peak_bytes'] / 2**20:.1f}",
            f"{r['peak_bytes'] / e2e['peak_bytes']:.3f}",
            f"{r['peak_bytes'] / floor['peak_bytes']:.3f}" if floor else "-",
            f"{r['activation_bytes'] / 2**20:.1f}",
            f"{r['predicted_peak_bytes'] / 2**20:.1f}",
            f"{r['step_time_s'] * 1e3:.1f}",
            f"{r['step_time_s'] / e2e['step_time_s']:.2f}",
            _percent(r["aux_params_fraction"]),
            _percent(r["aux_flops_fraction"]),
        )
    stdout.print(table)
    stdout.print(
        "peak = activation + parameters, gradients and optimizer state"
        + ("; CPU activation = bytes saved for backward" if result["device"] == "cpu" else "")
        + "; floor = R0 with a GAP+Linear head at the first context's cuts; aux = heads and "
        "bridges as a fraction of the backbone"
    )


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
        from contsup.data import load_dataset
        from contsup.distributed import pipeline
        from contsup.runs import open_run
        from contsup.trainer import resolve_device

        check_device(device)
        run = open_run(run_dir, best=best)
        config = run.config
        name = dataset or config.dataset
        target = resolve_device(device)
        data = load_dataset(
            name,
            batch_size=batch_size or config.batch_size,
            device=target,
            data_dir=data_dir or config.data_dir,
            workers=config.workers,
        )
        if (tuple(data.info.image_size), data.info.num_classes) != (
            tuple(run.info.image_size),
            run.info.num_classes,
        ):
            raise UserError(
                f"{name} has {data.info.num_classes} classes of {tuple(data.info.image_size)} "
                f"images; the run was trained on {run.info.num_classes} of "
                f"{tuple(run.info.image_size)}"
            )
        if dataset is None:
            data.take(None, config.test_images)  # the run's own test split
        scores = pipeline(run.learner, None, target).evaluate(data.test())
    accuracy, heads = scores.accuracy, scores.head_accuracies
    result = {
        "run": str(run_dir),
        "epoch": run.state["epoch"],
        "dataset": name,
        "test_images": data.test_size,
        "test_accuracy": accuracy,
        "test_loss": scores.loss,
        "head_accuracies": heads,
        "head_test_losses": scores.head_losses,
    }
    if as_json:
        print(json.dumps(result))
        return
    stdout.print(
        f"{run_dir} (epoch {result['epoch']}) on {name}: test accuracy "
        f"[bold]{accuracy:.4f}[/bold] over {data.test_size} images",
        highlight=False,
    )
    for i, value in enumerate(heads):
        stdout.print(f"  head {i} (after segment {i}): {value:.4f}", highlight=False)


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


@app.command()
def models(
    pattern: Annotated[
        str, typer.Argument(help="a word the name contains, or a wildcard like 'resnet*'")
    ] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """List the model names `contsup split` accepts."""
    import timm

    # A bare word matches anywhere in the name, as users type it ("resnet", "vit").
    wildcard = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = timm.list_models(wildcard)  # contsup's CIFAR ResNets are registered on import
    with user_errors():
        if not names:
            raise UserError(f"no model matches '{pattern}'")
    if as_json:
        print(json.dumps({"pattern": pattern, "models": names}))
    else:
        print("\n".join(names))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
