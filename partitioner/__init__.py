"""Cut any traceable model into K balanced, gradient-isolatable segments.

Example::

    import partitioner
    part = partitioner.partition(model, torch.randn(1, 3, 32, 32), k=4)
    part.segments, part.boundaries, part.imbalance

The partitioner knows nothing about local learning: it traces (``trace``), finds
where exactly one tensor crosses (``cuts``), measures costs on the meta device
(``cost``), derives each tensor's memory layout (``layout``), balances
(``balance``, ``choice``) and splits (``split``); ``analysis`` and ``plan`` tie
them up.
"""

from partitioner.boundary import Boundary, TensorSpec
from partitioner.cost import TRAINING_FLOPS_MULTIPLIER
from partitioner.errors import (
    InputSizeError,
    PartitionError,
    PartitionWarning,
    UntraceableModelError,
)
from partitioner.plan import (
    OBJECTIVES,
    Analysis,
    Partition,
    SegmentStats,
    analyze,
    check_objective,
    partition,
)
from partitioner.split import Segment
from partitioner.trace import register_leaf_module, trace

__all__ = [
    "OBJECTIVES",
    "TRAINING_FLOPS_MULTIPLIER",
    "Analysis",
    "Boundary",
    "InputSizeError",
    "Partition",
    "PartitionError",
    "PartitionWarning",
    "Segment",
    "SegmentStats",
    "TensorSpec",
    "UntraceableModelError",
    "analyze",
    "check_objective",
    "partition",
    "register_leaf_module",
    "trace",
]
