"""What a partition balances: the objectives, and what each segment costs.

An objective names one cost of a node or segment (``flops``, ``memory``,
``params``, ``time``); the balancer minimises the largest segment under it, and
``imbalance`` says how far from equal the result is. ``SegmentStats`` records a
segment's costs, summed from its nodes' by ``segment_stats``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from partitioner.boundary import Boundary
from partitioner.cost import NodeCost
from partitioner.cuts import Cut, tensor_count
from partitioner.errors import PartitionError

__all__ = [
    "OBJECTIVES",
    "ExtraCost",
    "SegmentStats",
    "check_objective",
    "imbalance",
    "objective_cost",
    "segment_extras",
    "segment_stats",
    "stretch_sums",
]

OBJECTIVES = ("flops", "memory", "params", "time")

ExtraCost = Callable[[Boundary], tuple[float, float]]
"""What a boundary adds, under the objective, to the segment that ends there and to
the one that starts there; e.g. the local head and the context bridge that local
learning puts at each cut."""


@dataclass(frozen=True)
class SegmentStats:
    """One segment: its first and last op, output shape, and what it costs.

    ``output_shape`` is None when the output is not one tensor (a multi-tensor
    boundary, a model returning a tuple). ``flops`` are forward FLOPs (a training step costs about
    ``TRAINING_FLOPS_MULTIPLIER`` times more) and ``activation_bytes`` the bytes
    autograd saves for backward, both at the example input's batch size.
    """

    first_node: str
    last_node: str
    output_shape: tuple[int, ...] | None
    flops: int
    activation_bytes: int
    params: int
    param_bytes: int
    time_s: float


def segment_stats(
    gm: fx.GraphModule,
    values: dict[str, Any],
    costs: dict[str, NodeCost],
    cuts: Sequence[Cut],
    segments: Sequence[nn.Module],
) -> list[SegmentStats]:
    """What each segment of ``gm`` cut at ``cuts`` costs, summed from its nodes' ``costs``.

    Example::

        stats = segment_stats(gm, prof.values, prof.costs, cuts, segments)

    ``values`` are the profiled values of ``gm``'s nodes; a segment's output shape
    is that of its one boundary tensor (None for several) or of the model output.
    """
    nodes = list(gm.graph.nodes)
    bounds = [-1, *(cut.position for cut in cuts), len(nodes) - 1]
    ends = [values[cut.boundary[0]] if len(cut.boundary) == 1 else None for cut in cuts]
    ends.append(fx.map_arg(nodes[-1].args[0], lambda n: values[n.name]))
    result = []
    for (a, b), segment, end in zip(zip(bounds, bounds[1:]), segments, ends):
        ops = [  # the ops that compute tensors, not asserts or shape arithmetic
            n
            for n in nodes[a + 1 : b + 1]
            if n.op.startswith("call_") and tensor_count(values.get(n.name))
        ]
        stretch = [costs[n.name] for n in nodes[a + 1 : b + 1]]
        result.append(
            SegmentStats(
                first_node=ops[0].name if ops else "",
                last_node=ops[-1].name if ops else "",
                output_shape=tuple(end.shape) if isinstance(end, torch.Tensor) else None,
                flops=sum(c.flops for c in stretch),
                activation_bytes=sum(c.saved_bytes for c in stretch),
                params=sum(p.numel() for p in segment.parameters()),
                param_bytes=sum(c.param_bytes for c in stretch),
                time_s=sum(c.time_s for c in stretch),
            )
        )
    return result


def check_objective(objective: str) -> None:
    """Raise ``PartitionError`` unless ``objective`` is one of ``OBJECTIVES``.

    Example::

        >>> check_objective("flops")
        >>> check_objective("speed")
        Traceback (most recent call last):
        ...
        partitioner.errors.PartitionError: unknown objective 'speed'; choose one of ...
    """
    if objective not in OBJECTIVES:
        raise PartitionError(
            f"unknown objective '{objective}'; choose one of {', '.join(OBJECTIVES)}"
        )


def objective_cost(cost: NodeCost | SegmentStats, objective: str) -> float:
    """The number ``objective`` balances, read off a node's or a segment's costs.

    Example::

        costs = [objective_cost(s, part.objective) for s in part.stats]
    """
    check_objective(objective)
    if isinstance(cost, NodeCost):
        return {
            "flops": cost.flops,
            "memory": cost.saved_bytes,
            "params": cost.param_bytes,
            "time": cost.time_s,
        }[objective]
    return {
        "flops": cost.flops,
        "memory": cost.activation_bytes,
        "params": cost.param_bytes,
        "time": cost.time_s,
    }[objective]


def imbalance(costs: Sequence[float]) -> float:
    """Largest over mean segment cost: 1.0 is perfect balance.

    Example::

        >>> imbalance([2.0, 1.0, 3.0])
        1.5
    """
    mean = sum(costs) / len(costs)
    return max(costs) / mean if mean > 0 else 1.0


def segment_extras(split_costs: Sequence[tuple[float, float]]) -> list[float]:
    """What each segment gains from the ``(before, after)`` costs of the cuts around it.

    Example::

        >>> segment_extras([(1, 2), (3, 4)])
        [1.0, 5.0, 4.0]
    """
    extras = [0.0] * (len(split_costs) + 1)
    for j, (before, after) in enumerate(split_costs):
        extras[j] += before
        extras[j + 1] += after
    return extras


def stretch_sums(per_node: Sequence[float], positions: Sequence[int]) -> list[float]:
    """Sum of ``per_node`` over each stretch that cuts after ``positions`` make.

    Example::

        >>> stretch_sums([1, 2, 3, 4], [0, 2])
        [1, 5, 4]
    """
    prefix = [0, *accumulate(per_node)]
    bounds = [0, *(p + 1 for p in positions), len(per_node)]
    return [prefix[b] - prefix[a] for a, b in zip(bounds, bounds[1:])]
