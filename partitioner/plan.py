"""``partition``: cut a model into K balanced segments in one call.

The work is done by modules with one job each; this one ties them up and keeps
every name it has always offered (``from partitioner.plan import read_plan``):

* ``objectives``: ``OBJECTIVES``, ``SegmentStats``, ``objective_cost``, ``imbalance``;
* ``analysis``: ``analyze``, ``Analysis`` and the ``Partition`` it returns;
* ``choice``: which cut candidates balancing uses;
* ``saved_plan``: plan files, ``read_plan`` and ``SavedPlan``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from partitioner.analysis import Analysis, Partition, analyze
from partitioner.objectives import (
    OBJECTIVES,
    ExtraCost,
    SegmentStats,
    check_objective,
    imbalance,
    objective_cost,
)
from partitioner.saved_plan import PLAN_VERSION, SavedPlan, read_plan

__all__ = [
    "OBJECTIVES",
    "PLAN_VERSION",
    "Analysis",
    "ExtraCost",
    "Partition",
    "SavedPlan",
    "SegmentStats",
    "analyze",
    "check_objective",
    "imbalance",
    "objective_cost",
    "partition",
    "read_plan",
]


def partition(
    model: nn.Module,
    example_input: torch.Tensor,
    k: int,
    objective: str = "flops",
    *,
    max_boundary_tensors: int = 1,
    leaf_modules: Iterable[type[nn.Module]] = (),
    extra_cost: ExtraCost | None = None,
) -> Partition:
    """Cut ``model`` into ``k`` segments balanced under ``objective``.

    Example::

        part = partitioner.partition(model, torch.randn(1, 3, 32, 32), k=16)
        y = part(x)                  # == model(x), bitwise in eval mode on CPU
        part.segments[3].train()     # each segment is an ordinary nn.Module

    Args:
        model: any fx-traceable module (timm and torchvision models are).
        example_input: a tensor of the input's shape and dtype; only its shape,
            dtype and (for ``time``) device are used. Costs scale with its batch size.
        k: number of segments, 1 <= k <= the number of cut candidates + 1.
        objective: ``flops`` (forward FLOPs), ``memory`` (bytes saved for
            backward), ``params`` (parameter bytes) or ``time`` (measured).
        max_boundary_tensors: allow cuts where up to this many tensors cross.
        leaf_modules: extra module classes fx should not trace into.
        extra_cost: ``extra_cost(boundary) -> (before, after)``: what a cut there
            adds to the segment that ends at it and to the one that starts at it,
            in the objective's units (local learning's heads and bridges).

    The segments share the model's parameters. The model's mode at call time does
    not matter: segments follow their own ``.train()``/``.eval()``.
    """
    check_objective(objective)
    analysis = analyze(
        model,
        example_input,
        measure_time=objective == "time",
        max_boundary_tensors=max_boundary_tensors,
        leaf_modules=leaf_modules,
    )
    return analysis.partition(k, objective, extra_cost=extra_cost)
