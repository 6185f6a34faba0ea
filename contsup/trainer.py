"""Train a LocalLearner: the paper's SGD and schedule, metrics, atomic checkpoints, resume.

Per epoch: train (one ``local_backward`` and one optimizer step per batch), then
evaluate on the test split, then commit a checkpoint (``contsup.checkpoint``),
then rewrite ``metrics.jsonl`` and ``metrics.csv`` from the checkpoint's metrics.
A kill at any moment loses at most the epoch in progress; ``resume=True``
continues from the last checkpoint with the same model, optimizer, schedule
position, random state and metrics, so the run ends as if never interrupted.
The same loop runs one process or, under torchrun, one pipeline stage per rank
(``contsup.distributed``); a checkpoint from either resumes in the other.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from contsup.atomic import write_text_atomic
from contsup.auxiliary.scaled import design_of
from contsup.building import (
    PlanError,
    build,
    build_learner,
    cut_nodes,
    default_threads,
    plan_cuts,
    resolve_device,
)
from contsup.checkpoint import (
    LEGACY,
    POINTER,
    CheckpointError,
    checkpoint_entries,
    convert_legacy,
    load_checkpoint,
    load_tensors,
    read_legacy,
    rng_state,
    save_checkpoint,
    set_rng_state,
    tensors_dir,
)
from contsup.config import IDENTITY, TrainConfig
from contsup.data import (
    info_record,
    steps_per_epoch,
)
from contsup.distributed import Pipeline, init_mesh, pipeline
from contsup.memory import PeakMemory
from contsup.schedule import schedule, warmup_epochs
from contsup.tensorboard import log_epoch, open_writer

__all__ = [
    "PlanError",
    "TrainConfig",
    "TrainingDiverged",
    "build",
    "build_learner",
    "cut_nodes",
    "default_threads",
    "plan_cuts",
    "resolve_device",
    "train",
]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def _write_metrics(out: Path, metrics: list[dict]) -> None:
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    lists = {
        "segment_losses": "loss_segment",
        "head_train_accuracies": "head_train_accuracy",
        "head_accuracies": "head_accuracy",
        "head_test_losses": "head_test_loss",
    }
    first = metrics[0] if metrics else {}
    columns = [k for k in first if k not in lists]
    expanded = [(key, len(first[key])) for key in lists if key in first]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = [f"{lists[key]}_{i}" for key, n in expanded for i in range(n)]
    writer.writerow(columns + header)
    for m in metrics:
        writer.writerow([m[c] for c in columns] + [v for key, _ in expanded for v in m[key]])
    write_text_atomic(out / "metrics.csv", buffer.getvalue())


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_step: Callable[[int, int, list[float], float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume) a training run; returns the last epoch's metrics plus ``out_dir``.

    Example::

        summary = train(TrainConfig(model="resnet20", dataset="digits", epochs=5, lr=0.05))
        summary["test_accuracy"]

    Under torchrun, every rank calls it: ``config.pipeline`` stages, the rest of the
    world as data-parallel replicas (``contsup.distributed``); only global rank 0
    reports and writes metrics. ``on_step(step, steps, losses, images_per_s)`` (this
    rank's units) and ``on_epoch(metrics)`` report progress. Raises
    ``TrainingDiverged`` on a NaN or infinite loss, ``CheckpointError`` on a
    checkpoint that is corrupt or from another run, ``DistributedError`` on a
    pipeline that cannot be laid out, ``RankLost`` when another rank dies.
    """
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads or default_threads())
    mesh = init_mesh(config.pipeline, str(device))
    try:
        return _train(config, mesh, resume, on_step, on_epoch)
    finally:
        if mesh is not None:
            torch.distributed.destroy_process_group()


def _train(config: TrainConfig, mesh, resume: bool, on_step, on_epoch) -> dict:
    out = config.out_dir()
    main = mesh is None or torch.distributed.get_rank() == 0
    committed = [out / name for name in (POINTER, LEGACY) if (out / name).exists()]
    if committed and not resume:
        raise CheckpointError(
            f"{committed[0]} exists; pass --resume to continue that run or choose another --out"
        )
    if resume and not committed:  # a typo must never restart a long run from scratch
        raise CheckpointError(
            f"cannot resume: {out} holds no {POINTER}; check the directory, or leave out "
            "--resume to start a new run"
        )
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    learner, data, device = build(config)
    pipe = pipeline(
        learner, mesh, device, balance=config.pipeline_balance, batch_size=config.batch_size
    )
    optimizer = torch.optim.SGD(
        pipe.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    metrics: list[dict] = []
    start_epoch = 1
    if resume and committed:
        if not (out / POINTER).exists():
            if mesh is not None:
                raise CheckpointError(
                    f"{out / LEGACY} is from contsup < 0.2; convert it first in one process "
                    f"(`contsup eval {out}` does), then resume here"
                )
            # The names it converts to are this run's: it must be the same run.
            _check_same_run(read_legacy(out / LEGACY), config, out / LEGACY)
            convert_legacy(out, [name for name, _ in pipe.named_parameters()])
        state = load_checkpoint(out)
        _check_same_run(state, config, out / POINTER)
        if design_of(config.aux, checkpoint_entries(out, state)) != config.aux:
            raise CheckpointError(
                f"{out} was trained by contsup 0.2, whose scaled bridges had a gain that this "
                "version's do not: resume it with contsup 0.2 (eval and export read it here)"
            )
        _load_state(out, state, pipe, optimizer)
        set_rng_state(state.get("rng"), generator)
        metrics = state["metrics"]
        start_epoch = state["epoch"] + 1
        if main:
            _write_metrics(out, metrics)  # drop anything written after the checkpoint
    autocast = {"bf16": torch.bfloat16, None: None}[config.amp]
    steps = steps_per_epoch(data)
    lr_at = schedule(
        config.schedule,
        lr=config.lr,
        epochs=config.epochs,
        steps_per_epoch=steps,
        warmup_epochs=warmup_epochs(config.warmup_epochs, config.epochs),
    )
    writer = open_writer(out, config.tensorboard) if main else None
    with closing(writer) if writer is not None else nullcontext():
        learner.train()
        for epoch in range(start_epoch, config.epochs + 1):
            started = time.perf_counter()
            k = learner.k
            totals = torch.zeros(2 * k, dtype=torch.float64)  # loss sums, then correct counts
            seen = 0
            with PeakMemory(device, pipe.parameters()) as memory:
                for step, (x, y, raw) in enumerate(data.train(generator), start=1):
                    if config.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    lr = lr_at((epoch - 1) * steps + step - 1)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    optimizer.zero_grad(set_to_none=True)
                    result = pipe.local_backward(x, y, raw=raw, autocast=autocast)
                    for unit, value in zip(result.units, result.losses):
                        if not math.isfinite(value):
                            raise TrainingDiverged(
                                f"the loss of segment {unit} became {value} at epoch {epoch}, step "
                                f"{step}; lower --lr or check the data"
                            )
                    optimizer.step()
                    units = result.units
                    losses = torch.tensor(result.losses, dtype=torch.float64)
                    totals[units.start : units.stop] += losses * result.size
                    totals[k + units.start : k + units.stop] += torch.tensor(result.correct)
                    seen += len(y)
                    if on_step is not None and main:
                        on_step(step, steps, result.losses, seen / (time.perf_counter() - started))
                pipe.flush()
            train_seconds = time.perf_counter() - started
            means = (pipe.all_reduce(totals) / seen).tolist()
            peak = pipe.all_reduce(torch.tensor([memory.peak_bytes]), op="max").item()
            test = pipe.evaluate(data.test(), autocast)
            heads = len(test.head_accuracies)
            record = {
                "epoch": epoch,
                "train_loss": means[k - 1],
                "segment_losses": means[:k],
                "train_accuracy": means[2 * k - 1],
                "head_train_accuracies": means[k : k + heads],
                "test_accuracy": test.accuracy,
                "test_loss": test.loss,
                "head_accuracies": test.head_accuracies,
                "head_test_losses": test.head_losses,
                "lr": lr,
                "seconds": time.perf_counter() - started,
                "images_per_s": seen / train_seconds,
                "peak_memory_bytes": peak,
            }
            metrics.append(record)
            state = {
                "config": asdict(config),
                "epoch": epoch,
                "rng": rng_state(generator),
                "metrics": metrics,
                "cuts": cut_nodes(learner),
                "data": info_record(data.info),
            }
            best = _best_epoch(out, metrics)
            state["best"] = {"epoch": best, "tensors": tensors_dir(best)} if best else None
            keep = (tensors_dir(best),) if best else ()
            save_checkpoint(out, _checkpoint_tensors(pipe, optimizer), state, keep)
            if main:
                _write_metrics(out, metrics)
                if writer is not None:
                    log_epoch(writer, record)
                if on_epoch is not None:
                    on_epoch(record)
    last = metrics[-1] if metrics else {"test_accuracy": None}
    return {**last, "epochs": config.epochs, "out_dir": str(out)}


def _best_epoch(out: Path, metrics: list[dict]) -> int | None:
    """The first epoch with the highest test accuracy, if its tensors are (or will be) on
    disk: the epoch being saved, or one whose directory was kept."""
    best = max(metrics, key=lambda m: m["test_accuracy"])["epoch"]
    last = metrics[-1]["epoch"]
    return best if best == last or (out / tensors_dir(best)).is_dir() else None


def _checkpoint_tensors(pipe: Pipeline, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's tensors under one process's names: ``learner.<name>`` for the
    learner's state, ``optimizer.<parameter name>.<slot>`` for the optimizer's."""
    tensors = {f"learner.{name}": t for name, t in pipe.state_dict().items()}
    names = {id(p): name for name, p in pipe.named_parameters()}
    for param, slots in optimizer.state.items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{names[id(param)]}.{slot}"] = value
    return tensors


def _load_state(out: Path, state: dict, pipe: Pipeline, optimizer: torch.optim.Optimizer) -> None:
    """Load this rank's learner and optimizer tensors from the checkpoint in ``out``."""
    stored = checkpoint_entries(out, state)
    wanted = {f"learner.{name}": t for name, t in pipe.state_dict().items()}
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for index, (name, param) in enumerate(pipe.named_parameters()):
        prefix = f"optimizer.{name}."
        for key, entry in stored.items():
            if key.startswith(prefix):
                slot = key[len(prefix) :]
                tensor = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
                if tensor.dim() and tensor.shape != param.shape:
                    raise CheckpointError(
                        f"{out} does not fit this model: optimizer state {key} is "
                        f"{tuple(tensor.shape)}, the parameter {tuple(param.shape)}"
                    )
                slots.setdefault(index, {})[slot] = wanted[key] = tensor.to(param.device)
    load_tensors(out, state, wanted)
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})


def _check_same_run(state: dict, config: TrainConfig, path: Path) -> None:
    saved = state.get("config")
    if not isinstance(saved, dict) or not isinstance(state.get("epoch"), int):
        raise CheckpointError(f"{path} is not a contsup checkpoint")
    # Runs of contsup < 0.3 had the paper's per-epoch schedule and a warm-up in epochs.
    saved = _effective({"schedule": "paper", **saved})
    current = _effective(asdict(config))
    changed = [name for name in IDENTITY if saved.get(name) != current[name]]
    if changed == ["epochs"]:
        raise CheckpointError(
            f"{path} is a run of {saved['epochs']} epochs; its learning-rate schedule is set "
            f"by its length, so it cannot go on to {current['epochs']}: start a new run "
            f"(another --out) with --epochs {current['epochs']}"
        )
    if changed:
        name = changed[0]
        raise CheckpointError(
            f"{path} is from a different run: {name} was {saved.get(name)!r}, now {current[name]!r}"
        )


def _effective(config: dict) -> dict:
    """A config record with the default warm-up resolved, so 10 and "a sixteenth of 160"
    compare equal."""
    epochs, warmup = config.get("epochs"), config.get("warmup_epochs")
    if warmup is None and isinstance(epochs, int):
        return {**config, "warmup_epochs": warmup_epochs(None, epochs)}
    return config
