"""What a training step will hold at its peak, predicted on the meta device.

``predict_step`` walks a learner built on the meta device unit by unit, as
``local_backward`` does, and adds up what the step holds when its largest unit
ends its forward pass (backward only frees from there):

* ``static``: weights, their gradients and the optimizer's state (SGD momentum:
  one copy; AdamW's two moments: two), of the backbone and its heads and bridges;
* ``saved``: what the unit's bridge, segment, head and loss save for backward;
  under ``amp`` half of it (bf16 activations) plus the bf16 copies autocast
  makes of the unit's weights;
* ``kept``: boundary inputs later bridges read that the unit itself does not save;
* ``transient``: twice the largest tensor the unit makes: during backward an op
  holds the gradient flowing in beside the one it computes, each up to that size;
* ``margin``: on CUDA, room for the caching allocator's rounding and
  fragmentation (``CUDA_MARGIN`` of the rest).

On the CPU ``contsup bench`` measures ``static + saved`` exactly (the bytes
autograd keeps, plus the static bytes); the transient, the autocast estimate and
the CUDA margin are not calibrated against a measurement.

Example::

    meta = wrap(meta_model, 4, example_input=torch.empty(32, 3, 224, 224, device="meta"))
    peak = predict_step(meta, x, y, optimizer="adamw")
    peak.total, peak.saved
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import partitioner
from contsup.errors import ConfigError
from contsup.learner import LocalLearner
from contsup.memory import SavedTensorTracker
from contsup.meta_ops import MemoizedMetaOps
from contsup.network import Carry

__all__ = [
    "CUDA_MARGIN",
    "OPTIMIZER_STATE_COPIES",
    "StepPeak",
    "check_optimizer",
    "predict_checkpoint",
    "predict_step",
    "training_state_bytes",
]

OPTIMIZER_STATE_COPIES = {"sgd": 1, "adamw": 2}  # state tensors per parameter
CUDA_MARGIN = 0.10  # the caching allocator's share; an allowance, not measured here


@dataclass(frozen=True)
class StepPeak:
    """The bytes a training step holds at its peak, by kind (see the module's docstring)."""

    static: int
    saved: int
    kept: int = 0
    transient: int = 0
    margin: int = 0
    unit: int = 0  # the unit (segment) where the step peaks

    @property
    def total(self) -> int:
        return self.static + self.saved + self.kept + self.transient + self.margin


def check_optimizer(optimizer: str) -> None:
    """Raise ``ConfigError`` unless ``optimizer`` is one the planner prices."""
    if optimizer not in OPTIMIZER_STATE_COPIES:
        raise ConfigError(f"optimizer takes sgd or adamw, got {optimizer!r}")


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def training_state_bytes(params: Sequence[torch.Tensor], optimizer: str = "sgd") -> int:
    """Weights, gradients and optimizer state of ``params``.

    Example::

        training_state_bytes(list(model.parameters()), "adamw")   # 4 copies of the weights
    """
    check_optimizer(optimizer)
    return (2 + OPTIMIZER_STATE_COPIES[optimizer]) * _nbytes(params)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op makes (the size of its gradient in backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@dataclass(frozen=True)
class _UnitPrice:
    """What one unit adds at its peak, and the shapes it leaves in the carry."""

    saved: int
    kept: int
    transient: int
    out: tuple  # (shape, stride, dtype) of the segment's output
    bridged: bool  # whether a bridge ran (and left its output in the carry)
    kept_input: tuple | None  # the bridge's output, None if no later bridge reads it


def predict_step(
    meta: LocalLearner,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: str = "sgd",
    amp: str | None = None,
    device: str = "cpu",
    units: dict | None = None,
) -> StepPeak:
    """The peak of one ``local_backward`` step and the optimizer step after it.

    Example::

        peak = predict_step(meta, torch.empty(32, 3, 224, 224, device="meta"),
                            torch.zeros(32, dtype=torch.long, device="meta"))

    ``meta`` is a learner built on the meta device (K=1 is end-to-end training);
    ``x`` and ``y`` meta tensors of the batch. ``amp`` is None or ``bf16``;
    ``device`` ``cpu`` or ``cuda`` (which adds ``CUDA_MARGIN``).

    ``units``: a dict this fills and reads, pricing each unit by what decides its
    price (its segment's cuts and the boundaries its carry holds), so that a planner
    walking many K of one model walks each distinct unit once. Share one only
    between learners ``wrap`` built from one model, input, ``amp`` and aux options.
    """
    static = training_state_bytes(list(meta.parameters()), optimizer)
    with MemoizedMetaOps():  # a planner walks the same ops on the same shapes at every K
        best = _peak_unit(meta, x, y, static, amp, {} if units is None else units)
    margin = int(CUDA_MARGIN * best.total) if device == "cuda" else 0
    return StepPeak(best.static, best.saved, best.kept, best.transient, margin, best.unit)


def _peak_unit(
    meta: LocalLearner, x: torch.Tensor, y: torch.Tensor, static: int, amp: str | None, units
) -> StepPeak:
    """The peak of the unit where the step peaks, walked as ``local_backward`` runs
    (no margin)."""
    carry = Carry(meta.context)
    cuts = [tuple(t.node for t in b.tensors) for b in meta.partition.boundaries]
    recent = meta.context.recent
    best = StepPeak(static, 0)
    for k in range(meta.k):
        # Unit k reads boundary k-1 and the `recent` boundary inputs before it, and
        # its segment ends at boundary k (the last at the model's end).
        key = (tuple(cuts[max(0, k - 1 - recent) : k + 1]), k == meta.k - 1)
        if key not in units:
            units[key] = _price_unit(meta, k, x, y, carry, amp)
        price = units[key]
        if price.bridged:
            carry.keep(_empty(price.kept_input) if price.kept_input is not None else None)
        carry.out = _empty(price.out)
        if price.saved + price.kept + price.transient > best.saved + best.kept + best.transient:
            best = StepPeak(static, price.saved, price.kept, price.transient, unit=k)
    return best


def _price_unit(meta: LocalLearner, k: int, x, y, carry: Carry, amp: str | None) -> _UnitPrice:
    """Unit ``k`` walked forward from ``carry`` (left as it was: the caller moves it on)."""
    unit = meta.unit(k)
    held = [t for t in [carry.out, *carry.inputs] if t is not None]
    walk = Carry(carry.mode, carry.out, list(carry.inputs))
    # The unit's own parameters are all its ops can save (the learner's whole list,
    # looked up once per unit, would cost more than the walk at large K).
    weights = [p for m in unit.modules() for p in m.parameters()]
    with SavedTensorTracker(weights, forward_only=True) as tracker, _LargestOutput() as largest:
        out = unit(x, walk, detach=True)
        last = k == meta.k - 1
        loss = F.cross_entropy(out, y) if last else meta.local_loss_of(k, out, y, None)
        saved_keys = set(tracker.live)
    saved = tracker.peak_bytes
    if amp is not None:
        saved = saved // 2 + _nbytes(weights) // 2
    kept = _nbytes(t for t in held if t.untyped_storage()._cdata not in saved_keys)
    del loss
    bridged = unit.bridge is not None
    kept_input = walk.inputs[-1] if bridged else None
    return _UnitPrice(
        saved,
        kept,
        2 * largest.largest,
        _layout(out),
        bridged,
        _layout(kept_input) if kept_input is not None else None,
    )


def _layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.dtype


def _empty(layout: tuple) -> torch.Tensor:
    shape, stride, dtype = layout
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


def predict_checkpoint(
    part: partitioner.Partition,
    x: torch.Tensor,
    *,
    optimizer: str = "sgd",
    device: str = "cpu",
    transient: int = 0,
) -> StepPeak:
    """The peak of gradient checkpointing at ``part``'s segments: backward recomputes
    segment k while the inputs of segments 0..k-1 are still kept.

    Example::

        predict_checkpoint(learner.partition, torch.empty(32, 3, 224, 224, device="meta")).total

    ``transient``: what to add for gradients in flight (``predict_step``'s, end-to-end).
    """
    inputs = [_nbytes([x])] + [
        _nbytes([torch.empty(b.shape, device="meta")]) for b in part.boundaries
    ]
    steps = [sum(inputs[:k]) + s.activation_bytes for k, s in enumerate(part.stats)]
    unit = max(range(len(steps)), key=steps.__getitem__)
    static = training_state_bytes(list(part.parameters()), optimizer)
    margin = int(CUDA_MARGIN * (static + steps[unit] + transient)) if device == "cuda" else 0
    return StepPeak(static, steps[unit], transient=transient, margin=margin, unit=unit)
