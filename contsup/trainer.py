"""Train a LocalLearner: the paper's SGD and schedule, metrics, atomic checkpoints, resume.

Per epoch: train (one ``local_backward`` and one optimizer step per batch), then
evaluate on the test split, then commit a checkpoint (``CheckpointManager``),
then rewrite ``metrics.jsonl`` and ``metrics.csv`` from the checkpoint's metrics.
A kill at any moment loses at most the epoch in progress; ``resume=True``
continues from the last checkpoint with the same model, optimizer, schedule
position, random state and metrics, so the run ends as if never interrupted.
The same loop runs one process or, under torchrun, one pipeline stage per rank
(``contsup.distributed``); a checkpoint from either resumes in the other.

The config lives in ``contsup.config``, model building in ``contsup.building``,
checkpoints in ``contsup.checkpoint_manager``, the numbers in ``contsup.metrics``;
their names are importable from here too, as before.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import dataclass

import torch

from contsup.building import (
    build,
    cut_nodes,
    default_threads,
    resolve_device,
)
from contsup.checkpoint_manager import CheckpointManager
from contsup.config import TrainConfig
from contsup.data import Batches, steps_per_epoch
from contsup.distributed import Pipeline, StageStep, init_mesh, pipeline
from contsup.learner import LocalLearner
from contsup.memory import PeakMemory
from contsup.metrics import EpochRecord, UnitTotals, write_metrics
from contsup.schedule import schedule, warmup_epochs
from contsup.tensorboard import log_epoch, open_writer

# TrainConfig (contsup.config) stays importable from here, where contsup 0.3 had it.
__all__ = ["TrainConfig", "TrainingDiverged", "train"]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_step: Callable[[int, int, list[float], float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> dict:
    """Run (or resume) a training run; returns the last epoch's metrics plus ``out_dir``.

    Example::

        summary = train(TrainConfig(model="resnet20", dataset="digits", epochs=5, lr=0.05))
        summary["test_accuracy"]

    Under torchrun, every rank calls it: ``config.pipeline`` stages, the rest of the
    world as data-parallel replicas (``contsup.distributed``); only global rank 0
    reports and writes metrics. ``on_step(step, steps, losses, images_per_s)`` (this
    rank's units) and ``on_epoch(record)`` (an ``EpochRecord``) report progress.
    Raises ``TrainingDiverged`` on a NaN or infinite loss, ``CheckpointError`` on a
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


@dataclass
class _Run:
    """What every epoch of one run uses."""

    config: TrainConfig
    learner: LocalLearner
    data: Batches
    device: torch.device
    pipe: Pipeline
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    lr_at: Callable[[int], float]
    steps: int
    autocast: torch.dtype | None
    main: bool  # global rank 0, which reports and writes metrics


def _train(config: TrainConfig, mesh, resume: bool, on_step, on_epoch) -> dict:
    out = config.out_dir()
    checkpoints = CheckpointManager(config)
    checkpoints.refuse_to_clobber(resume)
    run = _start(config, mesh)
    records: list[EpochRecord] = []
    first = 1
    if resume:
        records, first = checkpoints.resume(
            run.pipe, run.optimizer, run.generator, one_process=mesh is None
        )
        if run.main:
            write_metrics(out, records)  # drop anything written after the checkpoint
    writer = open_writer(out, config.tensorboard) if run.main else None
    with closing(writer) if writer is not None else nullcontext():
        run.learner.train()
        for epoch in range(first, config.epochs + 1):
            records.append(_epoch(run, epoch, on_step))
            cuts = cut_nodes(run.learner)
            checkpoints.save(records, run.pipe, run.optimizer, run.generator, cuts, run.data.info)
            if run.main:
                write_metrics(out, records)
                if writer is not None:
                    log_epoch(writer, records[-1])
                if on_epoch is not None:
                    on_epoch(records[-1])
    last = records[-1].as_dict() if records else {"test_accuracy": None}
    return {**last, "epochs": config.epochs, "out_dir": str(out)}


def _start(config: TrainConfig, mesh) -> _Run:
    """Seed, build the learner and its data, lay out the pipeline, make the optimizer."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    learner, data, device = build(config)  # looked up here, so tests can replace it
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
    steps = steps_per_epoch(data)
    lr_at = schedule(
        config.schedule,
        lr=config.lr,
        epochs=config.epochs,
        steps_per_epoch=steps,
        warmup_epochs=warmup_epochs(config.warmup_epochs, config.epochs),
    )
    autocast = {"bf16": torch.bfloat16, None: None}[config.amp]
    main = mesh is None or torch.distributed.get_rank() == 0
    return _Run(
        config, learner, data, device, pipe, optimizer, generator, lr_at, steps, autocast, main
    )


def _epoch(run: _Run, epoch: int, on_step) -> EpochRecord:
    """Train one epoch, then evaluate; the epoch's record (the same on every rank)."""
    started = time.perf_counter()
    totals, lr, peak = _train_epoch(run, epoch, started, on_step)
    train_seconds = time.perf_counter() - started
    means = totals.means(run.pipe)
    peak = run.pipe.all_reduce(torch.tensor([peak]), op="max").item()
    test = run.pipe.evaluate(run.data.test(), run.autocast)
    return EpochRecord.of(
        epoch,
        means,
        test,
        lr=lr,
        seconds=time.perf_counter() - started,
        images_per_s=totals.images / train_seconds,
        peak_memory_bytes=peak,
    )


def _train_epoch(run: _Run, epoch: int, started: float, on_step) -> tuple[UnitTotals, float, int]:
    """One pass over the training data: this rank's totals, the last step's learning
    rate, and this rank's peak memory."""
    totals = UnitTotals.zeros(run.learner.k)
    with PeakMemory(run.device, run.pipe.parameters()) as memory:
        for step, (x, y, raw) in enumerate(run.data.train(run.generator), start=1):
            result, lr = _step(run, epoch, step, x, y, raw)
            totals.add(result, len(y))
            if on_step is not None and run.main:
                elapsed = time.perf_counter() - started
                on_step(step, run.steps, result.losses, totals.images / elapsed)
        run.pipe.flush()
    return totals, lr, memory.peak_bytes


def _step(
    run: _Run, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor, raw
) -> tuple[StageStep, float]:
    """One optimizer step at the schedule's learning rate; its result and that rate."""
    if run.config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lr = run.lr_at((epoch - 1) * run.steps + step - 1)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    result = run.pipe.local_backward(x, y, raw=raw, autocast=run.autocast)
    for unit, value in zip(result.units, result.losses):
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"the loss of segment {unit} became {value} at epoch {epoch}, step "
                f"{step}; lower --lr or check the data"
            )
    run.optimizer.step()
    return result, lr
