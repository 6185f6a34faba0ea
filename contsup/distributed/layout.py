"""Where a rank's stage sits: which units it owns, its neighbours and its replicas.

A stage is a contiguous run of units (unit j: the bridge into segment j, segment
j, head j), balanced by the partition's costs or by each unit's measured step
time. The ``Layout`` is decided once, from the mesh; nothing after it asks the
mesh again, and one process is the layout of one stage and one replica.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh

from contsup.distributed.errors import DistributedError
from contsup.learner import Carry, LocalLearner
from partitioner.balance import min_max_partition
from partitioner.plan import objective_cost

__all__ = ["Layout", "mesh_sizes", "stage_bounds", "stage_costs", "unit_costs", "unit_seconds"]


def stage_bounds(costs: list[float], stages: int) -> list[int]:
    """Where each of ``stages`` contiguous stages starts, plus the end: the most
    balanced split of the unit ``costs`` (the largest stage as small as can be).

    Example::

        >>> stage_bounds([1, 1, 1, 1], 2), stage_bounds([3, 1, 1, 1], 2)
        ([0, 2, 4], [0, 1, 4])
    """
    if not 1 <= stages <= len(costs):
        raise DistributedError(
            f"--pipeline {stages} needs at least {stages} segments; the model has {len(costs)}"
        )
    return [0, *min_max_partition(costs, stages), len(costs)]


def unit_seconds(
    learner: LocalLearner, batch_size: int, device: torch.device, repeats: int = 2
) -> list[float]:
    """Seconds each unit's training step takes on random data of ``batch_size`` images,
    timed on a copy of ``learner`` on ``device`` (the learner and the random state are
    left as they were); the fastest of ``repeats`` runs.

    Example::

        unit_seconds(learner, 128, torch.device("cpu"))  # resnet32, K=4: [0.28, 0.14, 0.12, 0.09]
    """
    twin = copy.deepcopy(learner).to(device)
    shape = (batch_size, *learner.partition.input_shape[1:])
    best = [math.inf] * learner.k
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(shape, device=device)
        y = torch.zeros(batch_size, dtype=torch.long, device=device)  # class 0 always exists
        for _ in range(repeats):
            carry = Carry(learner.context)
            for j in range(learner.k):
                _synchronize(device)
                started = time.perf_counter()
                twin.local_units(x, y, carry, j, j + 1)
                _synchronize(device)
                best[j] = min(best[j], time.perf_counter() - started)
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unit_costs(learner: LocalLearner) -> list[float]:
    """Each unit's cost under the partition's objective, its heads and bridges included.

    Example::

        stage_bounds(unit_costs(learner), 2)   # [0, 2, 4]: units 0-1 and 2-3
    """
    part = learner.partition
    return [
        objective_cost(stats, part.objective) + extra
        for stats, extra in zip(part.stats, part.extra_costs)
    ]


def mesh_sizes(mesh: DeviceMesh | None) -> tuple[int, int]:
    """(pipeline stages, data-parallel replicas) of ``mesh``; (1, 1) for one process.

    Example::

        >>> mesh_sizes(None)
        (1, 1)
    """
    return (mesh["pp"].size(), mesh["dp"].size()) if mesh is not None else (1, 1)


def stage_costs(
    learner: LocalLearner,
    balance: str | list[float],
    mesh: DeviceMesh | None,
    batch_size: int,
    device: torch.device,
    all_reduce: Callable[[torch.Tensor], None],
) -> list[float]:
    """The unit costs stages balance: ``balance`` as ``pipeline()`` documents it.

    Example::

        costs = stage_costs(learner, "time", mesh, 128, device, world.all_reduce)

    ``all_reduce`` sums a tensor over every rank: timed costs must be the same on
    every rank, or ranks would cut the model differently.
    """
    if isinstance(balance, str) and balance not in ("cost", "time"):
        raise DistributedError(f"stages balance cost or time, not {balance!r}")
    if not isinstance(balance, str) and len(balance) != learner.k:
        raise DistributedError(f"balance needs {learner.k} unit costs, got {len(balance)}")
    stages, replicas = mesh_sizes(mesh)
    if stages == 1 or balance == "cost":
        return unit_costs(learner)
    if balance == "time":
        shard = -(-batch_size // replicas)
        seconds = torch.tensor(unit_seconds(learner, shard, device), dtype=torch.float64)
        all_reduce(seconds)  # every rank must cut the same way: average their clocks
        return seconds.tolist()
    return [float(c) for c in balance]


@dataclass(frozen=True)
class Layout:
    """One rank's place in the pipeline: its stage's units and the ranks it talks to.

    Example::

        layout = Layout.of(mesh, unit_costs(learner))
        layout.units, layout.previous, layout.next   # range(2, 4), 0, None (last of P=2)
        Layout.of(None, costs).units                 # one process: every unit

    Attributes:
        units: the units this stage owns; ``bounds``: every stage's start, plus the end.
        previous, next: global ranks of the neighbouring stages of this replica
            (None at either end of the pipe).
        replica_group: this stage's data-parallel group (None: one replica), and
            ``replica_source`` the global rank of its replica 0.
    """

    units: range
    bounds: tuple[int, ...]
    stage: int = 0
    stages: int = 1
    replica: int = 0
    replicas: int = 1
    previous: int | None = None
    next: int | None = None
    replica_group: ProcessGroup | None = None
    replica_source: int = 0
    mesh: DeviceMesh | None = None

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    @classmethod
    def of(cls, mesh: DeviceMesh | None, costs: list[float]) -> Layout:
        """This rank's layout on ``mesh`` (dims ``("dp", "pp")``; None: one process),
        stages balanced by the unit ``costs``."""
        stages, replicas = mesh_sizes(mesh)
        bounds = stage_bounds(costs, stages)
        if mesh is None:
            return cls(range(bounds[0], bounds[1]), tuple(bounds))
        stage, replica = mesh.get_local_rank("pp"), mesh.get_local_rank("dp")
        ranks = mesh.mesh[replica]  # the global ranks of this replica's stages
        return cls(
            units=range(bounds[stage], bounds[stage + 1]),
            bounds=tuple(bounds),
            stage=stage,
            stages=stages,
            replica=replica,
            replicas=replicas,
            previous=int(ranks[stage - 1]) if stage > 0 else None,
            next=int(ranks[stage + 1]) if stage < stages - 1 else None,
            replica_group=mesh.get_group("dp") if replicas > 1 else None,
            replica_source=int(mesh.mesh[0, stage]),
            mesh=mesh,
        )
