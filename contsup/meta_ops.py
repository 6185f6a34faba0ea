"""Fast meta-device runs: remember what each op returns for each input signature.

On the meta device many ops have no C++ kernel: PyTorch runs their Python
decompositions, a few dozen ops each (batch norm about 2.5 ms per call, a linear
layer or a cross-entropy 1-2 ms, against 0.02 ms for a convolution). A planner
that prices every K of a model runs the same ops on the same shapes again and
again, so ``MemoizedMetaOps`` runs each one once per input signature (shapes,
strides, dtypes and the other arguments) and afterwards hands back fresh empty
tensors of the remembered shapes, strides and dtypes: what the op would have
returned, since a meta tensor has nothing but those.

Example::

    with MemoizedMetaOps():
        peak = predict_step(meta_learner, x, y)

Only functional ops are memoized: ones that mutate nothing and return new
tensors, never views of their inputs, and only when every tensor argument (at
least one) and every output is on the meta device; everything else runs as
usual. The mode runs below autograd, so what autograd saves is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["MemoizedMetaOps"]

_MAX_ENTRIES = 4096
_results: dict[tuple, tuple[tuple[tuple, tuple, torch.dtype] | None, ...]] = {}


def _memoizable(func) -> bool:
    """Whether ``func`` mutates nothing and returns only new tensors (no views, no
    numbers, no lists)."""
    if func not in _functional:
        schema = func._schema
        _functional[func] = not schema.is_mutable and all(
            str(r.type) == "Tensor" and r.alias_info is None for r in schema.returns
        )
    return _functional[func]


_functional: dict = {}


class _NotMeta(Exception):
    """An argument lives on a real device: run the op as usual."""


def _signature(value: Any, tensors: list[int]) -> Any:
    """What decides an op's output metadata: a tensor's shape, strides and dtype;
    any other argument itself (lists and tuples element by element). Counts the
    tensors in ``tensors``."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            raise _NotMeta
        tensors.append(1)
        return ("tensor", tuple(value.shape), value.stride(), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v, tensors) for v in value)
    if isinstance(value, dict):
        return tuple((k, _signature(v, tensors)) for k, v in sorted(value.items()))
    return value


class MemoizedMetaOps(TorchDispatchMode):
    """Runs each functional op once per input signature on the meta device.

    The memory of results is shared by every instance (a planner enters one per
    K) and bounded: it is cleared when it holds ``_MAX_ENTRIES`` signatures.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _memoizable(func):
            return func(*args, **kwargs)
        tensors: list[int] = []
        try:
            key = (func, _signature(args, tensors), _signature(kwargs, tensors))
            hash(key)
        except (_NotMeta, TypeError):  # a real tensor, or an argument that cannot be a key
            return func(*args, **kwargs)
        if not tensors:  # a factory: its device is an argument, maybe not meta
            return func(*args, **kwargs)
        if key not in _results:
            out = func(*args, **kwargs)
            outs = out if isinstance(out, tuple) else (out,)
            # A backward op leaves out (None) the gradients nobody asked for.
            if all(t is None or t.device.type == "meta" for t in outs):
                if len(_results) >= _MAX_ENTRIES:
                    _results.clear()
                _results[key] = tuple(
                    None if t is None else (tuple(t.shape), t.stride(), t.dtype) for t in outs
                )
            return out
        fresh = tuple(
            None
            if layout is None
            else torch.empty_strided(*layout[:2], dtype=layout[2], device="meta")
            for layout in _results[key]
        )
        return fresh if len(fresh) > 1 else fresh[0]
