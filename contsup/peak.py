"""What a training step will hold at its peak, predicted on the meta device.

``predict_step`` runs a learner built on the meta device through one
``local_backward`` step, unit by unit and op by op, forward and backward, and
counts the bytes alive at each moment as a real run holds them (``LiveBytes``):
autograd frees what it saved once backward has read it, a unit's gradients appear
as its backward makes them, and the previous segment's output and the boundary
inputs later bridges read live until the step lets go of them. The peak is the
most bytes alive at once, by kind:

* ``static``: weights and the optimizer's state (SGD momentum: one copy; AdamW's
  two moments: two), of the backbone and its heads and bridges;
* ``grads``: the gradients alive at the peak: those of the units before the one
  that peaks, and what that unit's backward has made so far (the optimizer step
  after the last unit holds them all);
* ``saved``: what the unit saves for backward, alive at the peak; under ``amp``
  half of it (bf16 activations) plus the bf16 copies autocast makes of the unit's
  weights;
* ``kept``: the batch, the previous segment's output and the boundary inputs
  later bridges read, where the unit does not save them;
* ``transient``: everything else alive at the peak: activations no op saves yet
  to be dropped, and the gradients flowing through backward;
* ``margin``: on CUDA, room for the caching allocator's rounding and
  fragmentation (``CUDA_MARGIN`` of the rest); on the CPU, ``CPU_MARGIN`` for
  what kernels allocate that no tensor shows.

What the meta device cannot see is left out: a CPU or GPU kernel's own scratch
memory (a convolution's workspace), and the allocator's. On the CPU the process's
measured peak is a few per cent below or above the prediction
(``benchmarks/plan.py``); the autocast estimate and the CUDA margin are not
calibrated against a measurement.

Example::

    meta = wrap(meta_model, 4, example_input=torch.empty(32, 3, 224, 224, device="meta"))
    peak = predict_step(meta, x, y, optimizer="adamw")
    peak.total, peak.saved
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import partitioner
from contsup.errors import ConfigError
from contsup.learner import LocalLearner
from contsup.live_bytes import LiveBytes
from contsup.meta_ops import MemoizedMetaOps
from contsup.momentum_heads import MomentumHead, shadows
from contsup.network import Carry

__all__ = [
    "CPU_MARGIN",
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
# What CPU kernels hold beyond the tensors the walk sees (oneDNN's buffers). Since
# the walk prices convolutions' scratch, the process's measured peak has been within
# -0.3% and +0.1% of it at 18 planned budgets on eight models (benchmarks/plan.py);
# 1% leaves room for that, where 3% cost plans a segment more than they needed.
CPU_MARGIN = 0.01


@dataclass(frozen=True)
class StepPeak:
    """The bytes a training step holds at its peak, by kind (see the module's docstring).

    ``unit``: the unit (segment) where the step peaks; the number of units for the
    optimizer step after the last one.
    """

    static: int
    saved: int
    kept: int = 0
    transient: int = 0
    margin: int = 0
    unit: int = 0
    grads: int = 0

    @property
    def total(self) -> int:
        return self.static + self.grads + self.saved + self.kept + self.transient + self.margin


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


@dataclass(frozen=True)
class _UnitPrice:
    """What one unit holds at its own peak beyond the step's static bytes and the
    gradients of the units before it, what it leaves, and the shapes it leaves in
    the carry."""

    grads: int  # its gradients alive at its peak
    saved: int
    kept: int  # the carry it inherited, where not saved
    transient: int
    grads_made: int  # its gradients, alive once it is done
    weights: int  # its weights' bytes (autocast copies them)
    out: tuple  # (shape, stride, dtype) of the segment's output
    bridged: bool  # whether a bridge ran (and left its output in the carry)
    kept_input: tuple | None  # the bridge's output, None if no later bridge reads it

    def held(self, amp: str | None) -> tuple[int, int, int]:
        """(saved, kept, transient) as the step holds them; under bf16 autocast the
        activations halved, and the bf16 copies of the unit's weights saved too."""
        if amp is None:
            return self.saved, self.kept, self.transient
        return self.saved // 2 + self.weights // 2, self.kept // 2, self.transient // 2


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
    between learners ``wrap`` built from one model, input and aux options.
    """
    params = list(meta.parameters())
    check_optimizer(optimizer)
    static = (1 + OPTIMIZER_STATE_COPIES[optimizer]) * _nbytes(params) + _nbytes(shadows(meta))
    scratch = _CPU_SCRATCH if device == "cpu" else None
    with MemoizedMetaOps():  # a planner walks the same ops on the same shapes at every K
        best = _peak_unit(meta, x, y, static, amp, scratch, {} if units is None else units)
    # The optimizer step after the last unit: every gradient, and (torch's CPU loop)
    # two temporaries of one parameter's size (weight decay, Nesterov).
    largest = max((_nbytes([p]) for p in params), default=0)
    last = StepPeak(static, 0, _nbytes([x, y]), 2 * largest, 0, meta.k, _nbytes(params))
    if last.total > best.total:
        best = last
    margin = int((CUDA_MARGIN if device == "cuda" else CPU_MARGIN) * best.total)
    return replace(best, margin=margin)


def _peak_unit(
    meta: LocalLearner,
    x: torch.Tensor,
    y: torch.Tensor,
    static: int,
    amp: str | None,
    scratch: Callable | None,
    units: dict,
) -> StepPeak:
    """The peak of the unit where the step peaks, walked as ``local_backward`` runs
    (no margin)."""
    carry = Carry(meta.context)
    cuts = [tuple(t.node for t in b.tensors) for b in meta.partition.boundaries]
    recent = meta.context.recent
    batch = _nbytes([x, y])  # the step holds the batch throughout
    best, grads = StepPeak(static, 0, batch), 0
    for k in range(meta.k):
        # Unit k reads boundary k-1 and the `recent` boundary inputs before it, and
        # its segment ends at boundary k (the last at the model's end).
        # A momentum head runs the next segment's shadow too: its end decides as well.
        shadowed = k < meta.k - 1 and isinstance(meta.heads[k], MomentumHead)
        ahead = tuple(cuts[k + 1 : k + 2]) if shadowed else None
        key = (tuple(cuts[max(0, k - 1 - recent) : k + 1]), k == meta.k - 1, ahead)
        if key not in units:
            units[key] = _price_unit(meta, k, x, y, carry, scratch)
        price = units[key]
        if price.bridged:
            carry.keep(_empty(price.kept_input) if price.kept_input is not None else None)
        carry.out = _empty(price.out)
        saved, kept, transient = price.held(amp)
        here = StepPeak(static, saved, batch + kept, transient, unit=k, grads=grads + price.grads)
        if here.total > best.total:
            best = here
        grads += price.grads_made
    return best


def _price_unit(meta: LocalLearner, k: int, x, y, carry: Carry, scratch) -> _UnitPrice:
    """Unit ``k``'s forward and backward from ``carry``, as ``local_backward`` runs it,
    op by op on the meta device (``carry`` is left as it was: the caller moves it on)."""
    unit = meta.unit(k)
    # The unit's own parameters are all its backward can reach (the learner's whole
    # list, looked up once per unit, would cost more than the walk at large K).
    weights = [p for m in unit.modules() for p in m.parameters()]
    for p in weights:
        p.grad = None
    with _FusedAttention(), LiveBytes(scratch) as live:
        # The carry's tensors made afresh inside the walk: counted, and let go of
        # when the unit lets go of them (the caller's copies stay outside it).
        walk = Carry(
            carry.mode,
            None if carry.out is None else _empty(_layout(carry.out)),
            [None if t is None else _empty(_layout(t)) for t in carry.inputs],
        )
        inherited = [live.record_of(t) for t in [walk.out, *walk.inputs] if t is not None]
        _run_unit(meta, k, x, y, walk)
        out, kept_input = walk.out, walk.inputs[-1] if k else None
        del walk
        grads = [live.record_of(p.grad) for p in weights if p.grad is not None]
    for p in weights:
        p.grad = None
    grad_ids = {id(r) for r in grads if r is not None}
    inherited_ids = {id(r) for r in inherited if r is not None}
    kinds = {"grads": 0, "saved": 0, "kept": 0, "transient": live.peak_scratch}
    for record in live.at_peak():
        kind = (
            "grads"
            if id(record) in grad_ids
            else "saved"
            if record.saved
            else "kept"
            if id(record) in inherited_ids
            else "transient"
        )
        kinds[kind] += record.nbytes
    bridged = unit.bridge is not None
    return _UnitPrice(
        **kinds,
        grads_made=sum(r.nbytes for r in grads if r is not None),
        weights=_nbytes(weights),
        out=_layout(out),
        bridged=bridged,
        kept_input=_layout(kept_input) if bridged and kept_input is not None else None,
    )


class _FusedAttention(TorchFunctionMode):
    """``scaled_dot_product_attention`` as CPUs and GPUs run it: a fused kernel that
    saves its output and log-sum-exp for backward. The meta device has no fused
    kernel and falls back to the math form, which saves the attention matrix (for a
    ViT at batch 32, some 300 MiB a real step never holds); the walk runs the fused
    kernel's shape rules instead, where it takes the call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            fused = _fused_attention(*args, **kwargs)
            if fused is not None:
                return fused
        return func(*args, **kwargs)


def _fused_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    **rest,
):
    """The fused kernel's output, or None for a call it does not take (dropout, GQA,
    values of another width than the queries)."""
    if dropout_p or rest.get("enable_gqa") or query.device.type != "meta":
        return None
    if not query.shape[-1] == key.shape[-1] == value.shape[-1]:
        return None
    try:
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale
        )
    except RuntimeError:  # shapes the fused kernel refuses: the math form prices them
        return None
    return out[0]


def _convolution_backward_scratch(func, args, out) -> int:
    """oneDNN's CPU convolution backward holds its own copies while it runs, beside
    its outputs (measured on this project's CPU): the bytes of its input and incoming
    gradient, and of two inputs for a strided dense convolution (whose incoming
    gradient is smaller than its input). Strided grouped and depthwise convolutions
    hold one input and the gradient (5x5 depthwise ones only the input)."""
    if func is not torch.ops.aten.convolution_backward.default:
        return 0
    grad_out, x = _nbytes(args[:1]), _nbytes(args[1:2])
    strided_dense = any(s > 1 for s in args[4]) and args[9] == 1
    return x + (max(x, grad_out) if strided_dense else grad_out)


_CPU_SCRATCH = _convolution_backward_scratch


def _run_unit(meta: LocalLearner, k: int, x, y, carry: Carry) -> None:
    """Unit ``k``'s step as ``local_units`` takes it: ``LocalLearner._run_unit`` (forward,
    the bridge's output kept, backward), then the output detached into ``carry`` (a test
    checks the bytes against a real step's)."""
    raw = meta.raw_of(x) if meta.decoders else None
    _, _, out = meta._run_unit(k, x, y, carry, raw, nullcontext())
    carry.out = out.detach()


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
