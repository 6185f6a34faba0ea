"""Where to cut a timm model by name, and what its segments and aux modules cost:
the library behind ``contsup split``.

Example::

    plan = plan_split("resnet32", k=4, context="R1E")
    summary = split_summary(plan)      # the ``contsup split --json`` object
    summary["aux_fractions"]["params"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

import partitioner
from contsup.auxiliary import DEFAULT_DESIGN
from contsup.models.lookup import create_model
from contsup.momentum_heads import AUTO, resolve_momentum

__all__ = ["SplitPlan", "plan_split", "split_summary"]


@dataclass
class SplitPlan:
    """A model's cuts, with what was analysed to find them."""

    model: str
    net: nn.Module
    analysis: partitioner.Analysis
    partition: partitioner.Partition
    config: Any  # the AuxConfig priced with the segments, or None without a context
    momentum_heads: float | None = None  # their decay (resolved), priced with the heads


def plan_split(
    model: str,
    *,
    k: int = 4,
    objective: str = "flops",
    input_size: tuple[int, int, int] | None = None,
    batch_size: int = 32,
    max_boundary_tensors: int = 1,
    context: str | None = None,
    aux: str = DEFAULT_DESIGN,
    head: str = "1c2f",
    momentum_heads: float | str | None = AUTO,
) -> SplitPlan:
    """Cut the timm model ``model`` into ``k`` segments balanced by ``objective``.

    Example::

        plan = plan_split("resnet110", k=16, objective="memory")
        plan.partition.imbalance, plan.partition.to_json(model="resnet110")

    With ``context`` the heads and bridges of that context mode (``aux``, ``head``,
    ``momentum_heads``) are priced as ``wrap`` would build them; the balance counts
    each head at its own boundary (a momentum head's shadow is priced in the report,
    not in the balance). The model is built on the meta device unless ``objective``
    is ``time``, which needs real weights.
    """
    import torch

    partitioner.check_objective(objective)
    net = create_model(model, meta=objective != "time", input_size=input_size)
    size = tuple(input_size or net.pretrained_cfg["input_size"])
    device = next(net.parameters(), torch.empty(0)).device
    x = torch.zeros((batch_size, *size), device=device)
    analysis = partitioner.analyze(
        net, x, measure_time=objective == "time", max_boundary_tensors=max_boundary_tensors
    )
    config = _aux_config(net, x, context, aux, head) if context is not None else None
    if config is not None and objective != "time":
        from contsup.budget import balanced_partition

        part = balanced_partition(analysis, k, objective, config)
    else:
        part = analysis.partition(k, objective)
    decay = None
    if config is not None:
        decay = resolve_momentum(momentum_heads, config.design, "ce", part.stats, batch_size)
    return SplitPlan(model, net, analysis, part, config, decay)


def split_summary(plan: SplitPlan) -> dict[str, Any]:
    """The ``contsup split --json`` object: ``Partition.summary``, and with a context
    each segment's aux parameters, FLOPs and saved bytes (its head and input bridge).

    Example::

        split_summary(plan_split("resnet20", k=2))["segments"][1]["output_shape"]  # [32, 10]
    """
    summary = plan.partition.summary(model=plan.model)
    if plan.config is not None:
        _add_aux_budget(summary, plan)
    return summary


def _aux_config(net: nn.Module, x, context: str, aux: str, head: str):
    """The ``AuxConfig`` that ``split --context`` prices, as ``wrap`` would build it."""
    from contsup.learner import aux_config

    classes = getattr(net, "num_classes", 0) or 1000
    return aux_config(net, x, context=context, aux=aux, head=head, num_classes=classes)


def _add_aux_budget(summary: dict[str, Any], plan: SplitPlan) -> None:
    from contsup.budget import aux_budget
    from contsup.geometry import geometry_of

    part, config = plan.partition, plan.config
    geometries = [geometry_of(b.tensors[0], plan.net) for b in part.boundaries]
    momentum = plan.momentum_heads
    budget = aux_budget(config, geometries, part.stats, part.input_shape[0], momentum is not None)
    summary.update(
        context=str(config.mode), aux=config.design, head=config.head, momentum_heads=momentum
    )
    summary["aux_fractions"] = budget.fractions()
    for row, head, bridge in zip(summary["segments"], budget.heads, budget.bridges):
        row.update(
            head_params=head.params,
            head_flops=head.flops,
            head_saved_bytes=head.saved_bytes,
            bridge_params=bridge.params,
            bridge_flops=bridge.flops,
            bridge_saved_bytes=bridge.saved_bytes,
        )
