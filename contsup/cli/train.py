"""``contsup train``: train a model, or each run of a recipe, with local learning."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from contsup.cli.common import UserError, app, print_error, stderr, stdout, user_errors

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["train"]

PROGRESS_SECONDS = 30.0  # how often a run writes a progress line when not on a terminal
# The options that steer the command rather than the training configuration.
COMMAND_OPTIONS = ("recipe", "run", "resume", "as_json", "memory")


@app.command()
def train(
    ctx: typer.Context,
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
        typer.Option(
            help="cosine (per step, the default) | paper (the reference's, per epoch)"
            " | timm:cosine | timm:tanh | timm:poly (timm's scheduler, per step)"
        ),
    ] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option(help="default: a sixteenth of the run")
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help="sgd (the paper's, the default) | any timm optimizer: adamw, lamb, nesterov, ..."
        ),
    ] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            help="timm's transform (streamed datasets): timm | trivialaugment | a timm"
            " auto-augment policy, e.g. rand-m9-mstd0.5-inc1"
        ),
    ] = None,
    random_erasing: Annotated[
        float | None, typer.Option(help="timm's random erasing probability (streamed datasets)")
    ] = None,
    mixup: Annotated[float | None, typer.Option(help="mixup alpha (0: off)")] = None,
    cutmix: Annotated[float | None, typer.Option(help="cutmix alpha (0: off)")] = None,
    label_smoothing: Annotated[float | None, typer.Option()] = None,
    aux: Annotated[
        str | None, typer.Option(help="heads and bridges: sized (default) | scaled | paper")
    ] = None,
    head: Annotated[str | None, typer.Option(help="local head, e.g. 1c2f")] = None,
    local_loss: Annotated[str | None, typer.Option(help="ce | contrast")] = None,
    momentum_heads: Annotated[
        str | None,
        typer.Option(
            help="heads look through a moving average of the next segment: a decay (0.99), "
            "off, or auto (the default: 0.99 on small networks)"
        ),
    ] = None,
    objective: Annotated[str | None, typer.Option(help="what the cuts balance")] = None,
    cuts: Annotated[
        str | None,
        typer.Option(help="cut after these nodes, comma-separated (K follows from them)"),
    ] = None,
    plan: Annotated[
        str | None, typer.Option(help="cut where a plan from `contsup split --save` says")
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(help="cut into the fewest segments that fit this budget, e.g. 24GiB"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    amp: Annotated[str | None, typer.Option(help="bf16")] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last", help="NHWC memory")
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option("--compile", help="torch.compile each unit (bridge, segment, head)"),
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
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            help="also write a checkpoint every N optimizer steps (default: at epoch ends only)"
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the checkpoint in --out")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="last stdout line is one JSON object")
    ] = False,
) -> None:
    """Train MODEL with greedy local learning and context supply.

    SIGTERM or SIGUSR1 stops a run after its current step with a checkpoint, and it
    exits with code 75; --resume continues it.
    """
    # The options by name, as TrainConfig and recipes name them (None: not given), in the
    # signature's order, so that the first bad field reported is the same on every call.
    names = [p.name for p in ctx.command.params if p.name not in COMMAND_OPTIONS]
    options = {name: ctx.params[name] for name in names}
    with user_errors():
        from contsup.recipes import given_fields, runs_to_train

        if amp not in (None, "bf16"):
            raise UserError(f"--amp takes bf16, got {amp!r}")
        from contsup.momentum_heads import momentum_option

        options["momentum_heads"] = momentum_option(momentum_heads)
        for name, values in runs_to_train(recipe, run, given_fields(options)):
            summary = _train_one(values, resume, as_json, label=name, memory=memory)
            if as_json and summary is not None:
                print(json.dumps(summary))


def _train_one(
    values: dict, resume: bool, as_json: bool, label: str, memory: str | None = None
) -> dict | None:
    """Train one run; None on ranks other than global rank 0, which do not report."""
    import os

    from contsup.devices import check_device
    from contsup.distributed import RankLost
    from contsup.models.lookup import check_model_name
    from contsup.oom import StepOutOfMemory
    from contsup.preemption import PREEMPTED_EXIT_CODE
    from contsup.trainer import Preempted, TrainConfig, TrainingDiverged, train

    config = TrainConfig(**values)
    check_model_name(config.model)
    check_device(config.device)
    main = os.environ.get("RANK", "0") == "0"
    report = stderr if as_json else stdout
    if memory is not None:
        config = _planned(config, memory, report if main else None)
    else:
        _refuse_beyond_machine(config)
    if main:
        report.print(_run_line(config, label), highlight=False, soft_wrap=True)
    progress, on_step, on_epoch = _reporters(config, label, report, main)
    try:
        with progress:
            summary = train(config, resume=resume, on_step=on_step, on_epoch=on_epoch)
    except (TrainingDiverged, RankLost) as error:
        print_error(error)
        raise typer.Exit(1) from None
    except StepOutOfMemory as error:
        print_error(_oom_message(config, error))
        raise typer.Exit(2) from None
    except Preempted as error:
        if main:
            report.print(str(error), highlight=False, soft_wrap=True)
        raise typer.Exit(PREEMPTED_EXIT_CODE) from None
    if not main:
        return None
    report.print(
        f"test accuracy {summary['test_accuracy']:.4f} after {summary['epochs']} epochs; "
        f"run in {summary['out_dir']}",
        highlight=False,
    )
    return summary


def _reporters(config, label: str, report: Console, main: bool) -> tuple:
    """``(progress bar, on_step, on_epoch)`` for ``train``: the bar (on rank 0 only), a
    line per epoch, and without a terminal a plain line every ``PROGRESS_SECONDS``."""
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  {task.fields[ips]:.0f} img/s"),
        console=stderr,
        transient=True,
        disable=not main,
    )
    task = progress.add_task(f"{label or config.model} epoch", total=None, loss=0.0, ips=0.0)
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

    return progress, on_step, on_epoch


def _run_line(config, label: str) -> str:
    """What a run is about to do, printed before anything slow starts."""
    from contsup.building import default_threads, resolve_device

    device = resolve_device(config.device)
    threads = f" with {config.threads or default_threads()} threads" if device.type == "cpu" else ""
    cut = f"K={config.k}"
    if config.cuts:
        cut = f"{len(config.cuts) + 1} segments at given cuts"
    elif config.plan:
        cut = f"cut as {config.plan} says"
    momentum = config.momentum_heads
    heads = "" if momentum in (None, "off") else f", momentum heads {momentum}"
    return (
        f"{label + ': ' if label else ''}{config.model} {cut}, context {config.context}, "
        f"aux {config.aux}{heads}, on {config.dataset}: {config.epochs} epochs of batch "
        f"{config.batch_size}, {config.optimizer} at lr {config.lr} ({config.schedule}), "
        f"on {device}{threads}; "
        f"run in {config.out_dir()}"
    )


def _planned(config, memory: str, report: Console | None):
    """``config`` cut as the plan for ``memory`` says, with what was chosen printed."""
    from contsup.memory_plan import format_bytes, plan_run

    config, chosen = plan_run(config, memory)
    if report is not None:
        report.print(
            f"planned for {format_bytes(chosen.memory_bytes)}: K={chosen.k}, predicted peak "
            f"{format_bytes(chosen.peak.total)} (end-to-end {format_bytes(chosen.end_to_end.total)}"
            f", checkpointing {format_bytes(chosen.checkpoint.total)}); cut after "
            f"{', '.join(chosen.cuts) or 'nothing'}",
            highlight=False,
            soft_wrap=True,
        )
    return config


def _refuse_beyond_machine(config) -> None:
    """Refuse a one-process CPU run whose predicted step does not fit the machine's memory."""
    from contsup.building import resolve_device
    from contsup.devices import device_memory
    from contsup.distributed import launched
    from contsup.memory_plan import format_bytes, predict_run

    if launched() or resolve_device(config.device).type != "cpu":
        return
    machine = device_memory(str(resolve_device(config.device)))
    try:
        peak = predict_run(config).total
    except (RuntimeError, NotImplementedError):  # an op the meta device lacks: no prediction
        return
    if peak > machine:
        raise UserError(
            f"a training step of {config.model} at batch {config.batch_size} and K={config.k} "
            f"needs about {format_bytes(peak)}, more than this machine's "
            f"{format_bytes(machine)}; `contsup plan {config.model} --memory "
            f"{machine // 2**30}GiB --batch-size {config.batch_size} --device cpu` says what fits"
        )


def _oom_message(config, error) -> str:
    """The one sentence for a CUDA out-of-memory error in a step."""
    from contsup.building import resolve_device
    from contsup.data import parse_dataset
    from contsup.devices import device_memory
    from contsup.memory_plan import oom_sentence, predict_run

    total = device_memory(str(resolve_device(config.device)))
    info = parse_dataset(config.dataset)[0]
    options = dict(
        input_size=info.image_size,
        context=config.context,
        aux=config.aux,
        head=config.head,
        amp=config.amp,
        device="cuda",
        num_classes=info.num_classes,
    )
    return oom_sentence(
        error,
        model=config.model,
        batch_size=config.batch_size,
        k=len(config.cuts) + 1 if config.cuts else config.k,
        predicted_bytes=predict_run(config).total,
        device_bytes=total,
        plan_options=options,
    )
