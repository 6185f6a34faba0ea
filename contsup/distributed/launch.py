"""Joining a torchrun job: its ranks arranged as a ``("dp", "pp")`` device mesh."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from contsup.distributed.errors import DistributedError

__all__ = ["TIMEOUT", "init_mesh", "launched"]

TIMEOUT = timedelta(minutes=10)  # how long a rank waits for a peer that hangs without dying


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets RANK).

    Example::

        mesh = init_mesh(pipeline) if launched() else None
    """
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_mesh(pipeline: int, device: str = "cpu") -> DeviceMesh | None:
    """Join the torchrun job and arrange its ranks as a ``("dp", "pp")`` mesh.

    Example::

        mesh = init_mesh(pipeline=2, device="cuda")   # under torchrun --nproc-per-node 4
        mesh["pp"].size(), mesh["dp"].size()          # 2, 2

    Returns None for a single process (``pipeline == 1`` outside torchrun).
    Backend: NCCL for CUDA, gloo otherwise. Raises ``DistributedError`` for
    ``pipeline > 1`` outside torchrun and for a world size ``pipeline`` does not divide.
    """
    if pipeline < 1:
        raise DistributedError(f"--pipeline takes a number of stages >= 1, got {pipeline}")
    if not launched():
        if pipeline > 1:
            raise DistributedError(
                f"--pipeline {pipeline} needs one process per stage: launch with "
                f"`torchrun --nproc-per-node {pipeline} -m contsup train ...`"
            )
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world % pipeline:
        raise DistributedError(
            f"the world size {world} is not divisible by --pipeline {pipeline}; use a "
            "multiple of P processes (P pipeline stages times the data-parallel size)"
        )
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return init_device_mesh(device_type, (world // pipeline, pipeline), mesh_dim_names=("dp", "pp"))
