"""Pipelined local learning on ``torch.distributed``, with data parallelism per stage.

Segments are gradient-isolated, so a pipeline of them needs no backward pass
through the pipe and no flush: stage s runs forward, local backward and its
optimizer step on batch t, sends its boundary tensors downstream, and goes on to
batch t+1 while stage s+1 works on batch t. Each segment sees the same steps in
the same order as in one process, so the result is bitwise the same.

Ranks form a ``DeviceMesh`` with dims ``("dp", "pp")``. A stage is a contiguous run
of units (unit j: the bridge into segment j, segment j, head j), balanced by the
partition's costs or by each unit's measured step time. Every rank draws the
same batches (same seed, shuffle and augmentation numbers), but only the first
stage of each replica decodes its slice of them; it sends the labels, and the
image where a later unit reads it, down the pipe with the boundary tensors
(segment ``b-1``'s output and the earlier boundary inputs that ``Rn`` bridges
further down read). Each ``dp`` replica averages its stage's gradients with the
other replicas of that stage, weighted by slice size, as DDP would.

One job per module: ``launch`` (joining torchrun, the mesh), ``layout`` (which
units a rank's stage owns, and its neighbours and replicas), ``stage`` (those
units as a module), ``feed`` (what of each batch a rank loads, and what later
stages read), ``wire`` (the carry between stages), ``replica`` (data
parallelism within a stage) and ``pipe`` (the ``Pipeline`` composing them).
"""

from contsup.distributed.errors import DistributedError, RankLost
from contsup.distributed.feed import Needs, data_part
from contsup.distributed.launch import TIMEOUT, init_mesh, launched
from contsup.distributed.layout import Layout, stage_bounds, unit_costs, unit_seconds
from contsup.distributed.pipe import Pipeline, StageStep, pipeline
from contsup.distributed.stage import Stage
from contsup.metrics import Evaluation

__all__ = [
    "DistributedError",
    "Evaluation",
    "Layout",
    "Needs",
    "Pipeline",
    "RankLost",
    "Stage",
    "StageStep",
    "TIMEOUT",
    "data_part",
    "init_mesh",
    "launched",
    "pipeline",
    "stage_bounds",
    "unit_costs",
    "unit_seconds",
]
