"""Measure memory and speed of a training step: end-to-end, checkpointed, and local.

One process, one model, one synthetic batch on the device; for each
configuration a fresh copy of the model and its optimizer (SGD with momentum),
a few warm-up steps and one step whose memory is measured. On the CPU the timed
steps follow, interleaved: each round times one step of every configuration,
and a row's time is the median of its rounds. A shared machine's speed drifts
over minutes; configurations timed one after another would each meet a
different machine, while interleaved they meet the same one, so their ratios
hold. On a GPU each configuration is timed as soon as it is built, then freed.

Memory of one training step:

* CUDA: ``max_memory_allocated`` during the step, after a reset. Parameters,
  gradients and optimizer state (``static_bytes``) are counted apart from the
  rest (``activation_bytes``: what the step allocated at its peak beyond what
  was alive before it, less the gradients; the input batch is in neither).
* CPU: the peak of bytes saved for backward (``SavedTensorTracker``), plus the
  same static bytes. CPU allocators keep no usable high-water mark, so this is
  the part of memory local learning changes, measured exactly.

``predicted_peak_bytes`` is what the partitioner's meta-device analysis expects
for the same configuration, before running anything.

For each K, a ``floor`` row runs local learning with no context and the
cheapest head (``R0``, ``0c1f``: GAP + Linear) at the same cuts as the context
rows: what any head or bridge adds is measured against it. Local rows also
report their aux modules' parameters and forward FLOPs as fractions of the
backbone's (``contsup.budget``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import partitioner
from contsup.auxiliary import DEFAULT_DESIGN
from contsup.budget import STATIC_COPIES, aux_budget
from contsup.learner import LocalLearner, wrap
from contsup.memory import SavedTensorTracker
from contsup.momentum_heads import AUTO, momentum_of
from contsup.network import Carry
from contsup.oom import StepOutOfMemory
from contsup.optimizers import fused_step
from contsup.peak import predict_checkpoint

__all__ = ["BenchRow", "run_bench"]


@dataclass
class BenchRow:
    """One measured configuration; ``mode`` is ``e2e``, ``checkpoint``, ``floor``, ``local``
    or ``compiled`` (local, with each unit compiled)."""

    mode: str
    k: int
    context: str | None
    peak_bytes: int
    activation_bytes: int
    static_bytes: int
    step_time_s: float
    images_per_s: float
    predicted_peak_bytes: int
    aux: str | None = None
    head: str | None = None
    aux_params_fraction: float | None = None
    aux_flops_fraction: float | None = None
    aux_saved_fraction: float | None = None


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def static_bytes(params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Parameters + their gradients + optimizer state."""
    state = [v for s in optimizer.state.values() for v in s.values()]
    return 2 * _nbytes(params) + _nbytes(state)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_memory(
    step: Callable[[], None],
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    warmup: int = 2,
) -> tuple[int, int, int]:
    """(peak, activation, static) bytes of one step, after ``warmup`` steps.

    On CUDA the peak is counted from what was allocated before the step (with this
    configuration's gradients freed), so other configurations alive on the device
    do not count.
    """
    for _ in range(warmup):  # also creates the optimizer state
        step()
    _sync(device)
    static = static_bytes(params, optimizer)
    if device.type == "cuda":
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        # Alive before the step: the parameters, the optimizer state and the batch.
        activation = torch.cuda.max_memory_allocated(device) - before - _nbytes(params)
    else:
        with SavedTensorTracker(params) as tracker:
            step()
        activation = tracker.peak_bytes
    return activation + static, activation, static


def time_interleaved(
    steps: Sequence[Callable[[], None]], device: torch.device, rounds: int
) -> list[float]:
    """The median seconds of each of ``steps``, timed one step each per round.

    Example::

        e2e_s, local_s = time_interleaved([e2e_step, local_step], torch.device("cpu"), 5)
    """
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for step, seconds in zip(steps, times):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            seconds.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def measure(
    step: Callable[[], None],
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    steps: int,
    warmup: int = 2,
) -> tuple[int, int, int, float]:
    """(peak, activation, static) bytes of one step, and its median time in seconds
    over ``steps`` steps run back to back (``measure_memory``, ``time_interleaved``)."""
    peak, activation, static = measure_memory(step, params, optimizer, device, warmup=warmup)
    (seconds,) = time_interleaved([step], device, steps)
    return peak, activation, static, seconds


def _sgd(params) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.SGD(
        params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4, **fused_step(params)
    )


def _e2e_step(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _checkpoint_step(part: partitioner.Partition, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    # Reentrant checkpoints need an input that requires grad to reach the first segment.
    h = x.detach().requires_grad_()
    for segment in part.segments:
        h = checkpoint(segment, h, use_reentrant=True)
    F.cross_entropy(h, y).backward()
    optimizer.step()


def _local_step(learner: LocalLearner, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    learner.local_backward(x, y)
    optimizer.step()


def _predicted_static(params: Sequence[torch.Tensor]) -> int:
    return STATIC_COPIES * _nbytes(params)


def predict_local_steps(meta: LocalLearner, x: torch.Tensor, y: torch.Tensor) -> list[int]:
    """Bytes each step of ``local_backward`` saves, run forward-only on the meta device.

    Example::

        predict_local_steps(wrap(meta_model, 4, example_input=x), x, y)  # K numbers

    Step k saves what its input bridge, segment k and its head save; backward only
    frees, so the step peaks when its forward ends. ``meta`` is a learner built on
    the meta device; ``x`` and ``y`` are meta tensors of the benchmark's batch.
    """
    carry = Carry(meta.context)
    steps = []
    for k in range(meta.k):
        unit = meta.unit(k)
        with SavedTensorTracker(meta.parameters(), forward_only=True) as tracker:
            out = unit(x, carry, detach=True)
            last = k == meta.k - 1
            loss = F.cross_entropy(out, y) if last else meta.local_loss_of(k, out, y, None)
        steps.append(tracker.peak_bytes)
        del loss
        carry.out = out.detach()
    return steps


def predict_local(meta: LocalLearner, x: torch.Tensor, y: torch.Tensor) -> int:
    """Peak bytes of a local step: its largest step (``predict_local_steps``) plus
    the parameters, their gradients and SGD's momentum."""
    return max(predict_local_steps(meta, x, y)) + _predicted_static(list(meta.parameters()))


def run_bench(
    make_model: Callable[[], nn.Module],
    *,
    ks: Sequence[int],
    contexts: Sequence[str],
    batch_size: int,
    input_size: tuple[int, int, int],
    num_classes: int,
    device: str | torch.device = "cpu",
    steps: int = 5,
    objective: str = "memory",
    aux: str = DEFAULT_DESIGN,
    head: str = "1c2f",
    momentum_heads: float | str | None = AUTO,
    compile: bool = False,
    interleave: bool | None = None,
    on_built: Callable[[BenchRow], None] | None = None,
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Measure e2e, checkpointed, floor (per K) and local (per K and context) training steps.

    ``momentum_heads``: as ``wrap``'s (``auto``, ``off`` or a decay) for the context
    rows; the floor never has them.

    ``compile``: after each local row, a ``compiled`` row of the same configuration
    with ``LocalLearner.compile_units`` (compiled in the warm-up steps, not timed).

    ``interleave`` (default: on the CPU): every configuration stays alive until all
    are timed, in ``steps`` rounds that each time one step of every configuration
    (``time_interleaved``). Otherwise (default on a GPU) each configuration is
    timed, ``steps`` steps, as soon as it is built, and freed. ``on_built`` sees each
    row as its memory is measured (its time still NaN), ``on_row`` each finished row.

    Cuts are balanced by ``objective``: ``memory`` by default, since memory is what
    local learning saves (InfoPro's memory figures use memory-balanced cuts too).

    Example::

        rows = run_bench(lambda: timm.create_model("resnet110", num_classes=10),
                         ks=[4, 16], contexts=["R1E"], batch_size=1024,
                         input_size=(3, 32, 32), num_classes=10, device="cuda")
    """
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    bench = _Bench(make_model, x, y, device)

    # Predictions come from one meta-device analysis at this batch size.
    with torch.device("meta"):
        meta_model = make_model()
    analysis = partitioner.analyze(meta_model, torch.empty(x.shape, device="meta"))
    e2e_activation = sum(c.saved_bytes for c in analysis.costs.values())
    for k in ks:  # a bad K is an error before anything is measured
        analysis.check_k(k)

    # A shared CPU's speed drifts over minutes, so its configurations are timed in
    # rounds; on a GPU each is timed and freed at once: kept alive, every copy's
    # weights and optimizer state would crowd out the next configuration's step.
    if interleave is None:
        interleave = device.type == "cpu"
    configs: list[_Config] = []

    def built(config: _Config) -> None:
        if on_built is not None:
            on_built(config.row)
        if not interleave:
            (seconds,) = time_interleaved([config.step], device, steps)
            config = _Config(_timed(config.row, seconds, batch_size), step=None)
        configs.append(config)

    built(bench.e2e(e2e_activation))
    for k in ks:
        built(bench.checkpointed(k, objective))
        meta_x = torch.empty(x.shape, device="meta")
        runs = _local_runs(
            meta_model, k, meta_x, contexts,
            aux=aux, head=head, objective=objective, momentum_heads=momentum_heads,
        )  # fmt: skip
        for mode, options, meta in runs:
            built(bench.local(mode, k, options, meta))
            if compile and mode == "local":
                built(bench.local("compiled", k, options, meta, compile=True))
    rows = [c.row for c in configs]
    if interleave:
        times = time_interleaved([c.step for c in configs], device, steps)
        rows = [_timed(row, t, batch_size) for row, t in zip(rows, times, strict=True)]
    if on_row is not None:
        for row in rows:
            on_row(row)
    return rows


def _timed(row: BenchRow, seconds: float, batch_size: int) -> BenchRow:
    return replace(row, step_time_s=seconds, images_per_s=batch_size / seconds)


def _local_runs(
    meta_model: nn.Module, k: int, meta_x: torch.Tensor, contexts: Sequence[str], **options
) -> list[tuple[str, dict, LocalLearner]]:
    """``(mode, wrap options, the same learner built on the meta device)`` of the floor
    and of each context's local run; ``options`` are ``wrap``'s."""
    runs = []
    for context in contexts:
        local = dict(context=context, **options)
        runs.append(("local", local, wrap(meta_model, k, example_input=meta_x, **local)))
    # The floor runs at the first context row's cuts: the two then differ only
    # by what its heads and bridges add.
    floor = dict(options, context="R0", head="0c1f", momentum_heads=None, cuts=runs[0][2].partition)
    runs.insert(0, ("floor", floor, wrap(meta_model, k, example_input=meta_x, **floor)))
    return runs


@dataclass
class _Config:
    """A configuration: its ``row`` (memory measured; timed once ``step`` is None, which
    lets the model go)."""

    row: BenchRow
    step: Callable[[], None] | None


@dataclass
class _Bench:
    """Builds each configuration on one synthetic batch ``x``, ``y``, each on a fresh
    model from ``make_model`` and a fresh optimizer, and measures its memory."""

    make_model: Callable[[], nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device

    def _config(
        self,
        step: Callable[[], None],
        params: Iterable[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        where: str,
        row: Callable[..., BenchRow],
        predicted: int,
    ) -> _Config:
        try:
            measured = measure_memory(step, list(params), optimizer, self.device)
        except torch.OutOfMemoryError as error:
            raise StepOutOfMemory(None, where, predicted) from error
        except StepOutOfMemory as error:  # local_backward named the segment
            raise error.at(where.removeprefix("a step "), predicted) from error.__cause__
        return _Config(row(*measured, predicted_peak_bytes=predicted), step)

    def e2e(self, predicted_activation: int) -> _Config:
        model = self.make_model().to(self.device)
        optimizer = _sgd(model.parameters())
        step = partial(_e2e_step, model, optimizer, self.x, self.y)
        predicted = predicted_activation + _predicted_static(list(model.parameters()))
        row = partial(_row, "e2e", 1, None)
        return self._config(
            step, model.parameters(), optimizer, "a step of end-to-end", row, predicted
        )

    def checkpointed(self, k: int, objective: str) -> _Config:
        model = self.make_model().to(self.device)
        part = partitioner.partition(model, self.x, k, objective)
        optimizer = _sgd(model.parameters())
        step = partial(_checkpoint_step, part, optimizer, self.x, self.y)
        predicted = predict_checkpoint(part, self.x).total
        where = f"a step of checkpointing at K={k}"
        return self._config(
            step,
            model.parameters(),
            optimizer,
            where,
            partial(_row, "checkpoint", k, None),
            predicted,
        )

    def local(
        self, mode: str, k: int, options: dict, meta: LocalLearner, compile: bool = False
    ) -> _Config:
        learner = wrap(self.make_model().to(self.device), k, example_input=self.x, **options)
        if compile:
            learner.compile_units()
        optimizer = _sgd(learner.parameters())
        step = partial(_local_step, learner, optimizer, self.x, self.y)
        predicted = predict_local(meta, torch.empty(self.x.shape, device="meta"), self.y.to("meta"))
        where = f"a step of {mode} {options['context']} at K={k}"
        budget = aux_budget(
            meta.aux_config,
            meta.geometries,
            meta.partition.stats,
            len(self.x),
            momentum=momentum_of(meta) is not None,
        )
        fractions = budget.fractions()
        row = partial(
            _row,
            mode,
            k,
            options["context"],
            aux=options["aux"],
            head=options["head"],
            aux_params_fraction=fractions["params"],
            aux_flops_fraction=fractions["flops"],
            aux_saved_fraction=fractions["saved_bytes"],
        )
        return self._config(step, learner.parameters(), optimizer, where, row, predicted)


def _row(mode, k, context, peak, activation, static, **fields) -> BenchRow:
    """A row not yet timed (its time is NaN until ``time_interleaved`` gives it one)."""
    nan = float("nan")
    return BenchRow(mode, k, context, peak, activation, static, nan, nan, **fields)
