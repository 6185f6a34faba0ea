"""Fit a model into a memory budget: the fewest segments whose predicted peak fits.

The library behind ``contsup plan``, ``contsup train --memory`` and
``contsup.plan``. Everything runs on the meta device: no real tensor is made,
so planning a 224-px ResNet-50 takes seconds on any machine.

Example::

    plan = contsup.plan("resnet50", memory="6GiB", batch_size=128)
    plan.k, plan.cuts, plan.peak.total         # the fewest segments that fit, and where
    plan.end_to_end.total, plan.checkpoint.total, plan.max_batch_size, plan.floor_bytes

Accuracy falls as K grows, so the plan takes the smallest K that fits; its cuts
balance the bytes each segment saves for backward (objective ``memory``, heads
and bridges counted). The peak is not monotonic in K, so the search prices every K
from 1 up and stops at the first that fits.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import re
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn

import partitioner
from contsup.auxiliary import DEFAULT_DESIGN
from contsup.config import TrainConfig
from contsup.errors import ConfigError, ContsupError
from contsup.learner import LocalLearner, wrap
from contsup.momentum_heads import AUTO, check_momentum, momentum_of
from contsup.oom import StepOutOfMemory
from contsup.peak import (
    CUDA_MARGIN,
    StepPeak,
    check_optimizer,
    predict_checkpoint,
    predict_step,
    training_state_bytes,
)

__all__ = [
    "BudgetTooSmallError",
    "MemoryPlan",
    "format_bytes",
    "oom_sentence",
    "parse_memory",
    "plan",
    "plan_run",
    "predict_run",
    "priced_optimizer",
]

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_MAX_BATCH = 1 << 20  # no search for a batch beyond this


class BudgetTooSmallError(ContsupError):
    """No number of segments fits the model's training step into the budget;
    ``least_bytes``: the least any K needs (None below the floor, where none is tried).
    """

    def __init__(self, message: str, least_bytes: int | None = None):
        super().__init__(message)
        self.least_bytes = least_bytes


def parse_memory(text: str | int) -> int:
    """Bytes from ``24GiB``, ``24G``, ``512MiB``, ``1.5GB`` or a plain count of bytes
    (powers of 1024 whichever way the unit is spelled, as GPU memory is sold).

    Example::

        >>> parse_memory("24GiB") == 24 * 2**30
        True
    """
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
        if match is None:
            raise ConfigError(f"memory takes a size like 24GiB, 512MiB or 1.5GB, got {text!r}")
        value = int(float(match[1]) * _UNITS[match[2]])
    if value <= 0:
        raise ConfigError(f"memory must be more than 0 bytes, got {text!r}")
    return value


def format_bytes(n: int) -> str:
    """Bytes in GiB (or MiB below one GiB), for sentences.

    Example::

        >>> format_bytes(3 * 2**29)
        '1.50 GiB'
    """
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@dataclass
class MemoryPlan:
    """What ``plan`` chose, and the alternatives beside it (all bytes predicted).

    ``peak``, ``end_to_end`` and ``checkpoint`` are ``StepPeak`` records: local
    learning at ``k``, end-to-end training, and gradient checkpointing at the
    same cuts. ``floor_bytes`` is the least any K could need: the largest piece
    that cannot be cut (``floor_piece``) plus the weights, gradients and optimizer
    state. ``max_batch_size`` is the largest batch whose step fits at these cuts.
    """

    model: str
    memory_bytes: int
    batch_size: int
    input_size: tuple[int, int, int]
    device: str
    optimizer: str
    amp: str | None
    context: str
    aux: str
    head: str
    momentum_heads: float | None  # their decay at ``k`` (``auto`` resolved); None: plain
    k: int
    cuts: list[str]
    peak: StepPeak
    end_to_end: StepPeak
    checkpoint: StepPeak
    max_batch_size: int
    floor_bytes: int
    floor_piece: str
    partition: partitioner.Partition = field(repr=False, compare=False)

    @property
    def options(self) -> dict[str, Any]:
        """The heads and bridges it was planned with, as ``wrap`` and ``TrainConfig``
        take them.

        Example::

            learner = contsup.wrap(model, cuts=plan.cuts, **plan.options)
        """
        return dict(
            context=self.context, aux=self.aux, head=self.head, momentum_heads=self.momentum_heads
        )

    def to_dict(self) -> dict[str, Any]:
        """The plan as ``contsup plan --json`` prints it.

        Example::

            plan.to_dict()["peak"]["total"]
        """
        peaks = {
            name: {**vars(getattr(self, name)), "total": getattr(self, name).total}
            for name in ("peak", "end_to_end", "checkpoint")
        }
        return {
            "model": self.model,
            "memory_bytes": self.memory_bytes,
            "batch_size": self.batch_size,
            "input_size": list(self.input_size),
            "device": self.device,
            "optimizer": self.optimizer,
            "amp": self.amp,
            "context": self.context,
            "aux": self.aux,
            "head": self.head,
            "momentum_heads": self.momentum_heads,
            "k": self.k,
            "cuts": self.cuts,
            **peaks,
            "max_batch_size": self.max_batch_size,
            "floor_bytes": self.floor_bytes,
            "floor_piece": self.floor_piece,
            "uncalibrated": uncalibrated(self.device, self.amp),
        }

    def to_json(self) -> str:
        """A plan file: the cuts as ``contsup split --save`` writes them (so ``contsup
        train --plan`` reads it), with this record under ``memory_plan``."""
        return self.partition.to_json(model=self.model, memory_plan=self.to_dict())


def uncalibrated(device: str, amp: str | None) -> list[str]:
    """The parts of a prediction no measurement on this project's CPU machine checks."""
    notes = []
    if device == "cuda":
        notes.append(
            f"the CUDA caching allocator's margin ({CUDA_MARGIN:.0%}) and any GPU peak "
            "(only CPU peaks were measured)"
        )
    if amp is not None:
        notes.append("bf16 autocast (activations halved, plus bf16 weight copies)")
    return notes


@dataclass
class _Planner:
    """Predicts peaks of one model at one batch; prices each K once."""

    net: nn.Module
    x: torch.Tensor
    options: dict[str, Any]  # wrap's context, aux, head, momentum_heads
    optimizer: str
    amp: str | None
    device: str
    peaks: dict[int, StepPeak | None] = field(default_factory=dict)
    units: dict = field(default_factory=dict)  # predict_step's prices of the units walked
    modules: dict = field(default_factory=dict)  # heads and bridges, shared by the learners
    # Only the last learner is kept: the search ends on the one it chose, and
    # every K's fx graphs kept alive would slow Python's garbage collector.
    last: tuple[int, LocalLearner] | None = None

    @cached_property
    def analysis(self) -> partitioner.Analysis:
        """The model traced once at this batch: every K is cut from it."""
        return partitioner.analyze(self.net, self.x)

    def predict(self, learner: LocalLearner, x: torch.Tensor) -> StepPeak:
        y = torch.zeros(x.shape[0], dtype=torch.long, device="meta")
        # Units recur from K to K (the same cuts around them): each is walked once.
        units = self.units if x is self.x else None
        return predict_step(
            learner, x, y, optimizer=self.optimizer, amp=self.amp, device=self.device, units=units
        )

    @property
    def shadowed(self) -> bool:
        """Whether the learners priced have momentum heads."""
        return self.last is not None and momentum_of(self.last[1]) is not None

    def peak(self, k: int) -> StepPeak | None:
        """The predicted peak at ``k`` memory-balanced segments; None if it cannot be cut so."""
        if k not in self.peaks:
            learner = self.learner(k)
            self.peaks[k] = None if learner is None else self.predict(learner, self.x)
        return self.peaks[k]

    def learner(self, k: int) -> LocalLearner | None:
        """The memory-balanced learner at ``k``; None if it cannot be cut so."""
        if self.last is not None and self.last[0] == k:
            return self.last[1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", partitioner.PartitionWarning)
                learner = wrap(
                    self.net,
                    k,
                    objective="memory",
                    example_input=self.x,
                    analysis=self.analysis,
                    meta_modules=self.modules,
                    **self.options,
                )
        except (ContsupError, partitioner.PartitionError):
            return None
        self.last = (k, learner)
        return learner

    def at_batch(self, learner: LocalLearner, batch: int) -> StepPeak:
        """The peak at ``learner``'s cuts with another batch size."""
        x = torch.empty((batch, *self.x.shape[1:]), device="meta")
        other = wrap(
            self.net,
            cuts=learner.partition,
            example_input=x,
            meta_modules=self.modules,
            **self.options,
        )
        return self.predict(other, x)


def plan(
    model: str | nn.Module,
    *,
    memory: str | int,
    batch_size: int,
    input_size: tuple[int, int, int] | None = None,
    context: str = "E",
    aux: str = DEFAULT_DESIGN,
    head: str = "1c2f",
    momentum_heads: float | str | None = AUTO,
    optimizer: str = "sgd",
    amp: str | None = None,
    device: str = "cuda",
    num_classes: int | None = None,
) -> MemoryPlan:
    """The fewest segments whose training step fits ``memory`` at ``batch_size``.

    Example::

        plan = contsup.plan("resnet50", memory="24GiB", batch_size=256, context="R1E")
        learner = contsup.wrap(timm.create_model("resnet50"), cuts=plan.cuts, context="R1E")

    Args:
        model: a timm model name, or a model (copied to the meta device; yours is
            left as it is).
        memory: the budget, ``24GiB`` or bytes.
        input_size: C, H, W of one input (default: the model's own).
        context, aux, head, momentum_heads: the heads and bridges training will use
            (``wrap``'s).
        optimizer: ``sgd`` (momentum) or ``adamw`` (two moments).
        amp: None or ``bf16`` (autocast; estimated, not measured).
        device: ``cuda`` adds a margin for the caching allocator; ``cpu`` does not.
        num_classes: the classifier's width (default: the model's).

    Raises ``BudgetTooSmallError`` (one sentence naming the floor and the piece that
    sets it) when no K fits.
    """
    budget = parse_memory(memory)
    check_optimizer(optimizer)
    _check_aux_options(context, aux, head)
    check_momentum(momentum_heads)
    if amp not in (None, "bf16"):
        raise ConfigError(f"amp takes bf16, got {amp!r}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device takes cpu or cuda, got {device!r}")
    if batch_size < 2:  # batch norm refuses to train on one value per channel
        raise ConfigError(f"batch size must be at least 2, got {batch_size}")
    name, net = _meta_model(model, input_size, num_classes)
    size = tuple(input_size or net.pretrained_cfg["input_size"])
    x = torch.empty((batch_size, *size), device="meta")
    options = dict(context=context, aux=aux, head=head, momentum_heads=momentum_heads)
    planner = _Planner(net, x, options, optimizer, amp, device)
    analysis = planner.analysis
    floor, piece = _floor(analysis, net, optimizer, device)
    where = f"{name} at batch {batch_size}"
    if budget < floor:
        raise BudgetTooSmallError(
            f"{format_bytes(budget)} is below the floor of {format_bytes(floor)} for {where}: "
            f"{piece}; lower the batch size or raise the memory"
        )
    with _old_objects_set_aside():
        k = _smallest_k(planner, budget, analysis.max_k, where, floor)
    learner, peak = planner.learner(k), planner.peak(k)
    e2e = planner.peak(1) or peak
    checkpoint = predict_checkpoint(
        learner.partition, x, optimizer=optimizer, device=device, transient=e2e.transient
    )
    cuts = [b.tensors[0].node for b in learner.partition.boundaries]
    return MemoryPlan(
        model=name,
        memory_bytes=budget,
        batch_size=batch_size,
        input_size=size,
        device=device,
        optimizer=optimizer,
        amp=amp,
        context=context,
        aux=aux,
        head=head,
        momentum_heads=momentum_of(learner),
        k=k,
        cuts=cuts,
        peak=peak,
        end_to_end=e2e,
        checkpoint=checkpoint,
        max_batch_size=_largest_batch(planner, learner, peak, budget),
        floor_bytes=floor,
        floor_piece=piece,
        partition=learner.partition,
    )


def _check_aux_options(context: str, aux: str, head: str) -> None:
    """Raise ``ConfigError`` for a bad context, design or head before any K is tried
    (where it would read as a K that cannot be cut)."""
    from contsup.auxiliary import get_design
    from contsup.context import parse_context
    from contsup.heads import parse_head

    parse_context(context)
    get_design(aux)
    parse_head(head)


def _meta_model(
    model: str | nn.Module, input_size, num_classes: int | None
) -> tuple[str, nn.Module]:
    """The model's name and a copy of it on the meta device."""
    if isinstance(model, nn.Module):
        return type(model).__name__, copy.deepcopy(model).to("meta")
    import timm

    from contsup.models.lookup import check_model_name

    check_model_name(model)
    kwargs: dict[str, Any] = {"in_chans": input_size[0]} if input_size else {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.device("meta"):
        return model, timm.create_model(model, **kwargs)


def _floor(
    analysis: partitioner.Analysis, net: nn.Module, optimizer: str, device: str
) -> tuple[int, str]:
    """The least any K needs, and the piece that sets it, in words."""
    chunks = analysis.chunk_costs("memory")
    i = max(range(len(chunks)), key=chunks.__getitem__)
    positions = [-1, *(cut.position for cut, _ in analysis.cuts), len(analysis.nodes) - 1]
    nodes = analysis.nodes[positions[i] + 1 : positions[i + 1] + 1]
    ops = [n.name for n in nodes if n.op.startswith("call_")] or [n.name for n in nodes]
    static = training_state_bytes(list(net.parameters()), optimizer)
    floor = int(chunks[i]) + static
    if device == "cuda":
        floor += int(floor * CUDA_MARGIN)
    stretch = ops[0] if len(ops) == 1 else f"{ops[0]} .. {ops[-1]}"
    piece = (
        f"the piece {stretch}, which cannot be cut, saves {format_bytes(int(chunks[i]))} "
        f"for backward beside {format_bytes(static)} of weights, gradients and optimizer state"
    )
    return floor, piece


@contextlib.contextmanager
def _old_objects_set_aside():
    """Set the objects alive now aside from Python's garbage collector for a while.

    A full collection walks every live object (torch and timm bring some 400,000),
    and building learner after learner sets one off every few K: most of a long
    search's time, otherwise. Left alone where the caller already froze some.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _smallest_k(planner: _Planner, budget: int, max_k: int, where: str, floor: int) -> int:
    """The smallest K whose predicted peak fits: every K from 1 up, in order.

    The peak is not monotonic in K (memory-balanced cuts of K+1 segments may put a
    larger head or an earlier boundary in the unit that peaks), so no K is skipped.
    """
    for k in range(1, max_k + 1):
        peak = planner.peak(k)
        if peak is not None and peak.total <= budget:
            return k
    tried = {k: p.total for k, p in planner.peaks.items() if p is not None}
    if not tried:
        raise BudgetTooSmallError(f"no K can be cut with heads and bridges for {where}")
    best = min(tried, key=tried.__getitem__)
    # Momentum heads (the default on small networks) run a second segment per unit.
    plain = ", use plain heads (--momentum-heads off)" if planner.shadowed else ""
    raise BudgetTooSmallError(
        f"no K fits {where} into {format_bytes(budget)}: the least any K needs is "
        f"{format_bytes(tried[best])}, at K={best} (heads and bridges on top of the floor of "
        f"{format_bytes(floor)}); lower the batch size{plain} or raise the memory",
        least_bytes=tried[best],
    )


def _largest_batch(planner: _Planner, learner: LocalLearner, peak: StepPeak, budget: int) -> int:
    """The largest batch whose step fits at ``learner``'s cuts: the bytes that grow with
    the batch are nearly linear in it, so a guess from one point, checked and shrunk."""
    batch = planner.x.shape[0]
    fixed = peak.static + peak.grads  # weights, optimizer state and gradients: not the batch's
    per_sample = max(1.0, (peak.total - fixed) / batch)
    guess = min(_MAX_BATCH, int((budget - fixed) / per_sample))
    for _ in range(4):
        if guess <= batch:
            return batch
        total = planner.at_batch(learner, guess).total
        if total <= budget:
            return guess
        guess = int(guess * (budget - fixed) / (total - fixed) * 0.99)
    return batch


def plan_run(config: TrainConfig, memory: str | int) -> tuple[TrainConfig, MemoryPlan]:
    """``config`` cut where the plan for ``memory`` says, and that plan: what ``contsup
    train --memory`` trains.

    Example::

        config, chosen = plan_run(TrainConfig(model="resnet110", dataset="cifar10"), "4GiB")
        config.k, config.cuts, chosen.peak.total
    """
    if config.cuts is not None or config.plan is not None:
        raise ConfigError("give a memory budget, or cuts or a plan, not both")
    info = _dataset_info(config)
    chosen = plan(
        config.model,
        memory=memory,
        batch_size=config.batch_size,
        input_size=info.image_size,
        context=config.context,
        aux=config.aux,
        head=config.head,
        momentum_heads=config.momentum_heads,
        optimizer=priced_optimizer(config.optimizer),
        amp=config.amp,
        device=_device_type(config),
        num_classes=info.num_classes,
    )
    return replace(config, k=chosen.k, cuts=chosen.cuts or None), chosen


def priced_optimizer(name: str) -> str:
    """The planner's price for the training optimizer ``name`` (timm's names): ``sgd``
    for one state buffer (the SGD family), else ``adamw``'s two (Adam's family and LAMB;
    an upper bound for the rest of timm's).

    Example::

        >>> priced_optimizer("nesterov"), priced_optimizer("lamb")
        ('sgd', 'adamw')
    """
    return "sgd" if name in ("sgd", "nesterov", "momentum", "sgdp", "sgdw") else "adamw"


def predict_run(config: TrainConfig) -> StepPeak:
    """The predicted peak of one training step of ``config``, as it is cut.

    Example::

        predict_run(TrainConfig(model="resnet20", k=4, dataset="digits")).total
    """
    from contsup.building import config_cuts

    info = _dataset_info(config)
    _, net = _meta_model(config.model, info.image_size, info.num_classes)
    x = torch.empty((config.batch_size, *info.image_size), device="meta")
    cuts = config_cuts(config, info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", partitioner.PartitionWarning)
        learner = wrap(
            net,
            None if cuts is not None else config.k,
            cuts=cuts,
            context=config.context,
            aux=config.aux,
            head=config.head,
            momentum_heads=config.momentum_heads,
            objective=config.objective,
            example_input=x,
        )
    y = torch.zeros(config.batch_size, dtype=torch.long, device="meta")
    return predict_step(
        learner,
        x,
        y,
        optimizer=priced_optimizer(config.optimizer),
        amp=config.amp,
        device=_device_type(config),
    )


def _dataset_info(config: TrainConfig):
    from contsup.data import parse_dataset

    return parse_dataset(config.dataset)[0]


def _device_type(config: TrainConfig) -> str:
    from contsup.building import resolve_device

    return "cuda" if resolve_device(config.device).type == "cuda" else "cpu"


def oom_sentence(
    error: StepOutOfMemory,
    *,
    model: str,
    batch_size: int,
    device_bytes: int,
    plan_options: dict,
    k: int | None = None,
    predicted_bytes: int | None = None,
) -> str:
    """One sentence: where memory ran out, the predicted peak, and what ``plan`` says fits.

    Example::

        oom_sentence(error, model="resnet50", batch_size=256, device_bytes=24 << 30,
                     plan_options={"context": "E"}, k=2, predicted_bytes=30 << 30)
    """
    predicted_bytes = predicted_bytes or error.predicted_bytes
    predicted = format_bytes(predicted_bytes) if predicted_bytes else "unknown"
    at_k = f" at K={k}," if k is not None else ""
    head = (
        f"out of memory in {error.place()} of {model}{at_k} batch {batch_size} "
        f"(predicted peak {predicted}, device {format_bytes(device_bytes)})"
    )
    try:
        fit = plan(model, memory=device_bytes, batch_size=batch_size, **plan_options)
    except BudgetTooSmallError:
        return f"{head}; `contsup plan` finds no K that fits batch {batch_size}: lower it"
    return (
        f"{head}; `contsup plan` says K={fit.k} fits batch {batch_size} "
        f"(or batch {fit.max_batch_size} at K={fit.k})"
    )
