"""Data parallelism within a stage, and sums over every rank.

Each ``dp`` replica of a stage takes its slice of every batch, and averages its
stage's gradients with the other replicas of that stage, weighted by slice size,
as DDP would; batch-norm statistics come from replica 0 before every step. A
stage with one replica, and one process, get the no-op versions by construction.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh

from contsup.distributed.errors import lost, only_peer
from contsup.distributed.layout import Layout

__all__ = ["Alone", "Collective", "OneReplica", "Replicas", "replicas", "world"]

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


class Collective:
    """All-reduce over ``group`` (None: every rank), through ``device`` (NCCL needs CUDA).

    Example::

        world(mesh, device).all_reduce(totals)        # totals: summed over every rank
    """

    def __init__(self, device: torch.device, group: ProcessGroup | None = None):
        self.device, self.group = device, group

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """``tensor``'s sum (or ``op="max"``) over the group, in place."""
        moved = tensor.to(self.device)
        try:
            dist.all_reduce(moved, op=_OPS[op], group=self.group)
        except RuntimeError as error:
            raise lost(only_peer(self.group), error) from None
        tensor.copy_(moved)


class Alone:
    """One process: the sum over every rank is the tensor itself."""

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        pass


def world(mesh: DeviceMesh | None, device: torch.device) -> Collective | Alone:
    """Sums over every rank of ``mesh``'s job (None: one process, nothing to sum).

    Example::

        world(None, device).all_reduce(t)             # t unchanged
    """
    return Alone() if mesh is None else Collective(device)


class Replicas:
    """This stage's data-parallel replicas (``layout.replicas`` > 1).

    Example::

        x, y = replicas.shard(x, y)                   # this replica's slice
        replicas.broadcast_buffers(stage.buffers())   # replica 0's batch-norm statistics
        ...                                           # forward and backward on the slice
        replicas.average_gradients(stage_parameters, len(y) / total)
    """

    def __init__(self, layout: Layout, device: torch.device):
        self.size, self.index = layout.replicas, layout.replica
        self.source, self.group = layout.replica_source, layout.replica_group
        self.collective = Collective(device, layout.replica_group)
        self.device = device

    def shard(self, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
        """This replica's slice of each batch tensor (contiguous, sizes differ by at most 1)."""
        return [None if t is None else t.tensor_split(self.size)[self.index] for t in tensors]

    def average_gradients(self, parameters: Iterable[nn.Parameter], weight: float) -> None:
        """Replace each gradient by the slice-size-weighted mean over replicas (one
        all-reduce); a parameter without a gradient on every replica keeps none."""
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has_grad = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        flat = torch.cat([torch.cat([g.reshape(-1) * weight for g in grads]).float(), has_grad])
        self.collective.all_reduce(flat)
        offset = 0
        for p, g, flag in zip(params, grads, flat[-len(params) :].tolist()):
            size = p.numel()
            p.grad = flat[offset : offset + size].view_as(p).to(g.dtype) if flag else None
            offset += size

    def broadcast_buffers(self, buffers: Iterable[torch.Tensor]) -> None:
        """Replica 0's batch-norm statistics on every replica, as DDP does: one
        broadcast per dtype of ``buffers``, flattened together."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for buffer in buffers:
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
        for same in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in same])
            try:
                dist.broadcast(flat, src=self.source, group=self.group)
            except RuntimeError as error:
                raise lost(self.source, error) from None
            for buffer, value in zip(same, flat.split([b.numel() for b in same])):
                buffer.copy_(value.view_as(buffer))


class OneReplica:
    """A stage of one replica: the whole batch, its own gradients and statistics."""

    def shard(self, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
        return list(tensors)

    def average_gradients(self, parameters: Iterable[nn.Parameter], weight: float) -> None:
        pass

    def broadcast_buffers(self, buffers: Iterable[torch.Tensor]) -> None:
        pass


def replicas(layout: Layout, device: torch.device) -> Replicas | OneReplica:
    """The data parallelism of ``layout``'s stage.

    Example::

        x, y = replicas(layout, device).shard(x, y)
    """
    return OneReplica() if layout.replica_group is None else Replicas(layout, device)
