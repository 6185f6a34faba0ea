"""Track the bytes autograd keeps for backward, as they come and go.

``saved_tensors_hooks`` sees every tensor an op saves for its backward pass.
Packing it into a small holder object lets us notice when autograd lets go: the
holder dies with the graph (after ``backward()``, or when the output is dropped).
Storages are counted once however many ops save them, and parameters are not
activations, so they are left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["PeakMemory", "SavedTensorTracker"]


class _Held:
    __slots__ = ("tensor", "tracker", "key")

    def __init__(
        self, tensor: torch.Tensor | torch.UntypedStorage, tracker: SavedTensorTracker, key: int
    ):
        self.tensor, self.tracker, self.key = tensor, tracker, key

    def __del__(self):
        self.tracker._release(self.key)


class SavedTensorTracker:
    """Context manager measuring live and peak bytes saved for backward.

    Example::

        with SavedTensorTracker(model.parameters()) as tracker:
            model(x).sum().backward()
        tracker.peak_bytes

    Args:
        exclude: tensors (usually parameters) whose storages are not counted.
        forward_only: no backward will run (a prediction on the meta device): keep
            each saved tensor's storage, not the tensor. A saved output tensor would
            otherwise hold its own graph through autograd's C++ side, a cycle Python's
            garbage collector cannot see, so no graph of the block would ever die.
            (The storage must stay alive: a freed one's key can be reused by the next.)
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = (), *, forward_only: bool = False):
        self.excluded = {t.untyped_storage()._cdata for t in exclude}
        self.forward_only = forward_only
        self.live: dict[int, list[int]] = {}  # storage key -> [bytes, holders]
        self.current_bytes = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor):
        key = tensor.untyped_storage()._cdata
        if key in self.excluded:
            return tensor
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [tensor.untyped_storage().nbytes(), 0]
            self.current_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        entry[1] += 1
        return _Held(tensor.untyped_storage() if self.forward_only else tensor, self, key)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self.live[key]

    def __enter__(self) -> SavedTensorTracker:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class PeakMemory:
    """Peak memory over a block: the CUDA allocator's peak on a GPU; elsewhere the
    bytes autograd saved for backward (``SavedTensorTracker``), parameters excluded.

    Example::

        with PeakMemory(device, learner.parameters()) as memory:
            train_one_epoch()
        memory.peak_bytes
    """

    def __init__(self, device: torch.device, parameters: Iterable[torch.Tensor] = ()):
        self.device = torch.device(device)
        self.tracker = None if self.device.type == "cuda" else SavedTensorTracker(parameters)
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.tracker is None:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.tracker.__enter__()
        return self

    def so_far(self) -> int:
        """The peak since the block began, read inside it."""
        if self.tracker is None:
            return torch.cuda.max_memory_allocated(self.device)
        return self.tracker.peak_bytes

    def __exit__(self, *exc) -> None:
        if self.tracker is None:
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.tracker.__exit__(*exc)
            self.peak_bytes = self.tracker.peak_bytes
