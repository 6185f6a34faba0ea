"""Bytes alive, op by op: what a run holds at each moment, even on the meta device.

``LiveBytes`` sees every tensor an op makes (a dispatch mode, below autograd, so
backward's gradients too) and notices when its storage dies (a weak reference to
the storage, whose Python object lives exactly as long as the storage does). Its
``peak`` is the most bytes alive at once among the storages made inside it, as a
real run holds them: autograd frees a saved tensor once the backward op that read
it has run, and an activation nobody saves dies with the last Python name for it.
On the meta device a storage holds no data, so a walk costs only the ops' shape
rules; on a real device the same count checks it.

Example::

    with LiveBytes() as live:
        loss = model(x).sum()        # x and the weights on the meta device
        loss.backward()
    live.peak, live.at_peak()        # the most bytes at once, and which ones

Storages made outside the block (weights, the batch) are not counted; make the
tensors a step inherits (the previous segment's output) inside it, to count them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LiveBytes", "Storage"]


@dataclass
class Storage:
    """One storage made in the block: its bytes, when it was made and freed (on the
    block's clock, which ticks at every storage made or freed), and whether autograd
    saved it for backward."""

    nbytes: int
    made: int
    freed: float = float("inf")
    saved: bool = False


class LiveBytes(TorchDispatchMode):
    """Dispatch mode counting the bytes of the storages made inside it that are
    still alive (``current``) and the most at once (``peak``, at tick ``peak_at``).

    ``storages``: every storage made, in order; ``live``: a live storage's record by
    its storage key. Saved-for-backward storages are marked through
    ``saved_tensors_hooks`` (the tensor itself is kept, so lifetimes do not change).

    ``scratch(func, args, out)``: bytes a real kernel of ``func`` uses beside its
    outputs while it runs (a workspace the meta device cannot show); counted at the
    op, in ``peak`` and ``peak_scratch``, then gone.
    """

    def __init__(self, scratch: Callable[[Any, tuple, Any], int] | None = None):
        super().__init__()
        self.storages: list[Storage] = []
        self.live: dict[int, Storage] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.scratch = scratch
        self.clock = 0
        self.current = 0
        self.peak = 0
        self.peak_at = -1
        self.peak_scratch = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def __enter__(self) -> LiveBytes:
        super().__enter__()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not _aliases(func):  # a view or an in-place op makes no storage
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self._made(t.untyped_storage())
        extra = self.scratch(func, args, out) if self.scratch is not None else 0
        if self.current + extra > self.peak:
            self.peak, self.peak_at, self.peak_scratch = self.current + extra, self.clock, extra
        return out

    def _made(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self.live:  # a view, or an op writing into its input
            return
        self.clock += 1
        record = Storage(storage.nbytes(), self.clock)
        self.storages.append(record)
        self.live[key] = record
        self._refs[key] = weakref.ref(storage, lambda _, key=key: self._freed(key))
        self.current += record.nbytes

    def _freed(self, key: int) -> None:
        record = self.live.pop(key, None)
        self._refs.pop(key, None)
        if record is not None:
            self.clock += 1
            record.freed = self.clock
            self.current -= record.nbytes

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        record = self.live.get(tensor.untyped_storage()._cdata)
        if record is not None:
            record.saved = True
        return tensor

    def record_of(self, tensor: torch.Tensor) -> Storage | None:
        """The record of ``tensor``'s storage, if it was made here and is alive."""
        return self.live.get(tensor.untyped_storage()._cdata)

    def at_peak(self) -> list[Storage]:
        """The storages alive when the most bytes were (``peak_scratch`` beside them)."""
        return [s for s in self.storages if s.made <= self.peak_at < s.freed]


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


_aliasing: dict = {}


def _aliases(func) -> bool:
    """Whether ``func`` returns its input's storage (a view, ``detach``, an in-place or
    ``out=`` op): a storage made outside the block is not made again by a view of it."""
    if func not in _aliasing:
        _aliasing[func] = any(r.alias_info is not None for r in func._schema.returns)
    return _aliasing[func]
