"""Pipelined local learning on ``torch.distributed``, with data parallelism per stage.

Segments are gradient-isolated, so a pipeline of them needs no backward pass
through the pipe and no flush: stage s runs forward, local backward and its
optimizer step on batch t, sends its boundary tensors downstream, and goes on to
batch t+1 while stage s+1 works on batch t. Each segment sees the same steps in
the same order as in one process, so the result is bitwise the same.

Ranks form a ``DeviceMesh`` with dims ``("dp", "pp")``. A stage is a contiguous run
of units (unit j: the bridge into segment j, segment j, head j), balanced by the
partition's costs or by each unit's measured step time. Every rank replays the
same batches (same seed, sampler and augmentation), so only boundary tensors
travel: segment ``b-1``'s output and the earlier boundary inputs that ``Rn``
bridges further down read. Each ``dp`` replica takes its slice of every batch and
averages its stage's gradients with the other replicas of that stage, weighted by
slice size, as DDP would.

One job per module: ``launch`` (joining torchrun, the mesh), ``layout`` (which
units a rank's stage owns, and its neighbours and replicas), ``stage`` (those
units as a module), ``wire`` (the carry between stages), ``replica`` (data
parallelism within a stage) and ``pipe`` (the ``Pipeline`` composing them).
"""

from contsup.distributed.errors import DistributedError, RankLost
from contsup.distributed.launch import TIMEOUT, init_mesh, launched
from contsup.distributed.layout import Layout, stage_bounds, unit_costs, unit_seconds
from contsup.distributed.pipe import Pipeline, StageStep, pipeline
from contsup.distributed.stage import Stage
from contsup.metrics import Evaluation

__all__ = [
    "DistributedError",
    "Evaluation",
    "Layout",
    "Pipeline",
    "RankLost",
    "Stage",
    "StageStep",
    "TIMEOUT",
    "init_mesh",
    "launched",
    "pipeline",
    "stage_bounds",
    "unit_costs",
    "unit_seconds",
]
