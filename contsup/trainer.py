"""Train a LocalLearner: the paper's SGD and schedule (or timm's optimizers, schedulers,
mixup/cutmix and label smoothing, chosen by name), metrics, atomic checkpoints, resume.

Per epoch: train (one ``local_backward`` and one optimizer step per batch), then
evaluate on the test split, then commit a checkpoint (``CheckpointManager``),
then rewrite ``metrics.jsonl`` and ``metrics.csv`` from the checkpoint's metrics.
A kill at any moment loses at most the epoch in progress, or with
``checkpoint_every`` the steps since the last step checkpoint; ``resume=True``
continues from the last checkpoint with the same model, optimizer, schedule
position, random state and metrics (mid-epoch: the epoch's order and augmentation
drawn again up to the step, no image decoded), so the run ends as if never
interrupted. SIGTERM or SIGUSR1 stops
the run after its step with a checkpoint (``contsup.preemption``).
The same loop runs one process or, under torchrun, one pipeline stage per rank
(``contsup.distributed``), each rank decoding only its part of every batch; a
checkpoint from either resumes in the other.

The config lives in ``contsup.config``, model building in ``contsup.building``,
checkpoints in ``contsup.checkpoint_manager``, the numbers in ``contsup.metrics``;
their names are importable from here too, as before.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass

import torch

from contsup.building import (
    build,
    cut_nodes,
    default_threads,
    resolve_device,
)
from contsup.checkpoint import rng_state, set_rng_state
from contsup.checkpoint_manager import CheckpointManager
from contsup.config import TrainConfig
from contsup.data import Batches, BatchPart, steps_per_epoch
from contsup.distributed import Pipeline, StageStep, init_mesh, pipeline
from contsup.learner import LocalLearner
from contsup.memory import PeakMemory
from contsup.metrics import EpochRecord, UnitTotals, write_metrics
from contsup.mixing import TargetMixer, check_mixing, mixer_for
from contsup.momentum_heads import check_momentum
from contsup.oom import StepOutOfMemory
from contsup.optimizers import check_optimizer, make_optimizer
from contsup.preemption import PartialEpoch, Preempted, StopSignals, check_checkpoint_every
from contsup.schedule import check_schedule, schedule, warmup_epochs
from contsup.tensorboard import log_epoch, open_writer

# TrainConfig (contsup.config) stays importable from here, where contsup 0.3 had it.
__all__ = ["Preempted", "TrainConfig", "TrainingDiverged", "train"]

# Under torch.distributed, the ranks agree on a stop (one all-reduce) every this many steps.
STOP_CHECK_STEPS = 10


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
    SIGTERM and SIGUSR1 (only while it runs) stop it after the step in progress (under
    torch.distributed, at most ``STOP_CHECK_STEPS`` steps later, the same on every
    rank) with a checkpoint: it raises ``Preempted``, and ``resume=True`` goes on.
    Raises ``ConfigError`` on a ``checkpoint_every`` below 1, ``TrainingDiverged`` on a
    NaN or infinite loss, ``CheckpointError`` on a checkpoint that is corrupt or from
    another run, ``DistributedError`` on a pipeline that cannot be laid out, ``RankLost``
    when another rank dies.
    """
    check_checkpoint_every(config.checkpoint_every)
    _check_recipe_pieces(config)
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads or default_threads())
    mesh = init_mesh(config.pipeline, str(device))
    try:
        with StopSignals() as signals:
            return _train(config, mesh, resume, on_step, on_epoch, signals)
    finally:
        if mesh is not None:
            torch.distributed.destroy_process_group()


def _check_recipe_pieces(config: TrainConfig) -> None:
    """Refuse, before anything slow, an optimizer, schedule, augmentation or mixing that
    cannot run (``ConfigError``: one sentence)."""
    from contsup.data.augment import check_augment

    check_optimizer(config.optimizer)
    check_schedule(config.schedule)
    check_augment(config.augment, config.random_erasing)
    check_mixing(config.mixup, config.cutmix, config.label_smoothing, config.local_loss)
    if config.momentum_heads is not None:
        check_momentum(config.momentum_heads)


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
    checkpoints: CheckpointManager
    signals: StopSignals
    stop_every: int  # steps between checks for a stop
    mixer: TargetMixer | None  # mixup, cutmix, label smoothing; None: hard labels


def _train(config: TrainConfig, mesh, resume: bool, on_step, on_epoch, signals) -> dict:
    out = config.out_dir()
    checkpoints = CheckpointManager(config)
    checkpoints.refuse_to_clobber(resume)
    run = _start(config, mesh, checkpoints, signals)
    records: list[EpochRecord] = []
    first, partial = 1, None
    if resume:
        records, first, partial = checkpoints.resume(
            run.pipe, run.optimizer, run.generator, one_process=mesh is None
        )
        if partial is not None:  # every rank's sums: each takes its units' (replica 0 only)
            units = run.pipe.units if run.pipe.layout.replica == 0 else range(0)
            partial.totals = partial.totals.only(units)
        if run.main:
            write_metrics(out, records)  # drop anything written after the checkpoint
    writer = open_writer(out, config.tensorboard) if run.main else None
    with closing(writer) if writer is not None else nullcontext():
        run.learner.train()
        for epoch in range(first, config.epochs + 1):
            records.append(_epoch(run, records, epoch, on_step, partial))
            partial = None
            cuts = cut_nodes(run.learner)
            checkpoints.save(records, run.pipe, run.optimizer, run.generator, cuts, run.data.info)
            if run.main:
                write_metrics(out, records)
                if writer is not None:
                    log_epoch(writer, records[-1])
                if on_epoch is not None:
                    on_epoch(records[-1])
            if epoch < config.epochs and _stop_agreed(run):
                raise _preempted(run, epoch, run.steps)
    last = records[-1].as_dict() if records else {"test_accuracy": None}
    return {**last, "epochs": config.epochs, "out_dir": str(out)}


def _start(config: TrainConfig, mesh, checkpoints: CheckpointManager, signals) -> _Run:
    """Seed, build the learner and its data, lay out the pipeline, make the optimizer."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    learner, data, device = build(config)  # looked up here, so tests can replace it
    pipe = pipeline(
        learner, mesh, device, balance=config.pipeline_balance, batch_size=config.batch_size
    )
    optimizer = make_optimizer(
        config.optimizer,
        pipe.named_parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        no_weight_decay=learner.no_weight_decay(),
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
    stop_every = 1 if mesh is None else STOP_CHECK_STEPS
    mixer = mixer_for(data.info.num_classes, config.seed, config.mixup, config.cutmix,
                      config.label_smoothing)  # fmt: skip
    return _Run(
        config, learner, data, device, pipe, optimizer, generator, lr_at, steps, autocast, main,
        checkpoints, signals, stop_every, mixer,
    )  # fmt: skip


def _epoch(
    run: _Run, records: list[EpochRecord], epoch: int, on_step, partial: PartialEpoch | None
) -> EpochRecord:
    """Train one epoch (from where ``partial`` stopped), then evaluate; the epoch's record
    (the same on every rank). ``records``: the epochs before, for step checkpoints."""
    started = time.perf_counter()
    position = partial or PartialEpoch(
        epoch, 0, run.generator.get_state(), UnitTotals.zeros(run.learner.k), 0
    )
    totals, lr, peak = _train_epoch(run, records, position, started, on_step)
    train_seconds = time.perf_counter() - started
    means = totals.means(run.pipe)
    peak = run.pipe.all_reduce(torch.tensor([peak]), op="max").item()
    test = run.pipe.evaluate_parts(run.data.test_parts(run.pipe.data_part), run.autocast)
    return EpochRecord.of(
        epoch,
        means,
        test,
        lr=lr,
        seconds=time.perf_counter() - started,
        images_per_s=totals.images / train_seconds,
        peak_memory_bytes=peak,
    )


def _train_epoch(
    run: _Run, records: list[EpochRecord], position: PartialEpoch, started: float, on_step
) -> tuple[UnitTotals, float, int]:
    """The rest of a pass over the training data, from ``position`` (updated as it goes):
    this rank's totals, the last step's learning rate, and this rank's peak memory."""
    epoch, totals = position.epoch, position.totals
    batches = _batches_from(run, position)
    with PeakMemory(run.device, run.pipe.parameters()) as memory:
        for step, part in enumerate(batches, start=position.step + 1):
            result = _step(run, epoch, step, part)
            totals.add(result, part.total)
            position.step = step
            _checkpoint_if_due(run, records, position, memory.so_far())
            if on_step is not None and run.main:
                elapsed = time.perf_counter() - started
                on_step(step, run.steps, result.losses, totals.images / elapsed)
        run.pipe.flush()
    peak = max(memory.peak_bytes, position.peak_memory_bytes)
    return totals, run.lr_at(epoch * run.steps - 1), peak


def _batches_from(run: _Run, position: PartialEpoch) -> Iterator[BatchPart]:
    """This rank's part (``pipe.data_part``) of the epoch's batches after
    ``position.step``: the data generator is set to the epoch's start, and the batches
    already trained are drawn but not decoded, so order and augmentation are the
    uninterrupted run's. Then the random state the checkpoint recorded after its step
    is put back."""
    if not position.step:
        return run.data.train_parts(run.generator, run.pipe.data_part)
    after = rng_state(run.generator)
    run.generator.set_state(position.data_rng)
    batches = run.data.train_parts(run.generator, run.pipe.data_part, skip=position.step)
    set_rng_state(after, run.generator)
    return batches


def _checkpoint_if_due(
    run: _Run, records: list[EpochRecord], position: PartialEpoch, peak: int
) -> None:
    """After a step: a step checkpoint every ``checkpoint_every`` steps (not at an epoch's
    end, which has its own), or at an agreed stop, which then raises ``Preempted``."""
    every, step = run.config.checkpoint_every, position.step
    done = (position.epoch - 1) * run.steps + step
    due = every is not None and done % every == 0 and step < run.steps
    stop = (done % run.stop_every == 0 or step == run.steps) and _stop_agreed(run)
    if not (due or stop):
        return
    run.pipe.flush()
    totals, k = position.totals, run.learner.k
    # Every rank's sums (one collective), so one process can resume from them.
    summed = run.pipe.all_reduce(torch.cat([totals.losses, totals.correct]))
    peak = int(run.pipe.all_reduce(torch.tensor([max(peak, position.peak_memory_bytes)]), "max"))
    here = PartialEpoch(position.epoch, step, position.data_rng,
                        UnitTotals(summed[:k], summed[k:], totals.images), peak)  # fmt: skip
    cuts = cut_nodes(run.learner)
    run.checkpoints.save(records, run.pipe, run.optimizer, run.generator, cuts, run.data.info, here)
    if stop:
        raise _preempted(run, position.epoch, step)


def _stop_agreed(run: _Run) -> bool:
    """Whether a stop signal reached any rank (one all-reduce under torch.distributed)."""
    flag = torch.tensor([1.0 if run.signals.received else 0.0])
    return run.pipe.all_reduce(flag, op="max").item() > 0


def _preempted(run: _Run, epoch: int, step: int) -> Preempted:
    signal_name = run.signals.received or "another rank's signal"
    return Preempted(signal_name, epoch, step, str(run.config.out_dir()))


def _step(run: _Run, epoch: int, step: int, part: BatchPart) -> StageStep:
    """One optimizer step at the schedule's learning rate on this rank's ``part`` of the
    batch; its result."""
    if run.config.channels_last and part.x is not None:
        part.x = part.x.contiguous(memory_format=torch.channels_last)
    done = (epoch - 1) * run.steps + step - 1
    if run.mixer is not None and part.x is not None:
        # The rank that loads the images mixes them; every local loss, here and in later
        # stages (the soft targets travel with the carry), gets the soft targets. Data
        # parallel replicas mix within their slice, as each rank does in timm's training.
        part.x, part.y = run.mixer(part.x, part.y, done)
        if part.raw is not None:  # the decoders' target: the mixed image
            part.raw = run.learner.raw_of(part.x)
    lr = run.lr_at(done)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    try:
        result = run.pipe.local_backward_part(part, run.autocast)
    except StepOutOfMemory as error:
        raise error.at(f"at epoch {epoch}, step {step}") from error.__cause__
    for unit, value in zip(result.units, result.losses):
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"the loss of segment {unit} became {value} at epoch {epoch}, step "
                f"{step}; lower --lr or check the data"
            )
    try:
        run.optimizer.step()
    except torch.OutOfMemoryError as error:
        where = f"the optimizer step at epoch {epoch}, step {step}"
        raise StepOutOfMemory(None, where) from error
    return result
