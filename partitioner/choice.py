"""Which cut candidates to use: min-max balance, then two rules the optimum ignores.

``min_max_partition`` finds the cuts that minimise the costliest segment. On top
of it, ``choose_cuts`` prefers cuts whose memory layout is known, and keeps every
segment with trainable parameters when the model leaves room to (see
``Analysis.partition``, whose docstring states the rules).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx

from partitioner.balance import group_sums, min_max_partition
from partitioner.errors import PartitionWarning
from partitioner.objectives import segment_extras, stretch_sums

__all__ = ["Balanced", "Candidates", "choose_cuts", "trainable_params"]


@dataclass(frozen=True)
class Balanced:
    """One balancing: the cuts it chose and what its segments cost.

    ``chosen`` indexes ``Analysis.cuts``; ``extras`` are what split costs add to
    each segment; ``peak`` is the costliest segment's cost, extras included.
    """

    chosen: list[int]
    extras: list[float]
    peak: float


@dataclass(frozen=True)
class Candidates:
    """What choosing needs to know of a model's cut candidates, in graph order.

    ``positions`` are the candidates' node positions, ``layout_known`` whether each
    one's boundary layouts are known, ``trainable`` the trainable parameters each
    node brings (``trainable_params``); ``model_name`` goes into the warning.
    """

    positions: list[int]
    layout_known: list[bool]
    trainable: list[int]
    model_name: str


def choose_cuts(
    candidates: Candidates,
    k: int,
    per_node: list[float],
    split_costs: list[tuple[float, float]] | None,
) -> Balanced:
    """Balance ``k`` segments over ``per_node`` costs, under both rules.

    Example::

        best = choose_cuts(candidates, 4, analysis.node_costs("flops"), None)
        analysis.split(best.chosen, "flops", best.extras)
    """
    numbers = list(range(len(candidates.positions)))
    best = _balance(candidates, numbers, k, per_node, split_costs)
    known = [i for i in numbers if candidates.layout_known[i]]
    if len(known) < len(numbers) and len(known) >= k - 1:
        alternative = _balance(candidates, known, k, per_node, split_costs)
        if alternative.peak <= best.peak * (1 + 1e-9):
            best, numbers = alternative, known
    empty = _parameterless(candidates, best.chosen)
    if empty:
        merged = _with_parameters(candidates, numbers)
        if len(merged) >= k - 1:
            best = _balance(candidates, merged, k, per_node, split_costs)
        else:
            warnings.warn(
                f"k={k} leaves no other choice than {len(empty)} segment(s) without "
                f"trainable parameters: only {len(merged) + 1} stretches between the "
                f"cut candidates of {candidates.model_name} have any",
                PartitionWarning,
                stacklevel=3,  # at the caller of Analysis.partition
            )
    return best


def trainable_params(gm: fx.GraphModule) -> list[int]:
    """Trainable parameters each node of ``gm`` brings to its segment.

    Example::

        per_node = trainable_params(trace(model, training=True))

    A module's count at its call, a fetched parameter's at its first user (it
    travels there); a parameter used twice counts once, where first used.
    """
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    fetched = dict(gm.named_parameters(remove_duplicate=False))
    counts = [0] * len(nodes)
    seen: set[int] = set()
    for i, n in enumerate(nodes):
        if n.op == "call_module":
            params = list(gm.get_submodule(n.target).parameters())
        elif n.op == "get_attr" and n.users:
            i = min(order[u] for u in n.users)
            params = [fetched[n.target]] if n.target in fetched else []
        else:
            continue
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                counts[i] += p.numel()
    return counts


def _balance(
    candidates: Candidates,
    numbers: list[int],
    k: int,
    per_node: list[float],
    split_costs: list[tuple[float, float]] | None,
) -> Balanced:
    """Min-max balance ``k`` segments using only the candidates numbered ``numbers``."""
    chunks = stretch_sums(per_node, [candidates.positions[i] for i in numbers])
    pairs = None if split_costs is None else [split_costs[i] for i in numbers]
    splits = min_max_partition(chunks, k, split_costs=pairs)
    extras = [0.0] * k if pairs is None else segment_extras([pairs[s - 1] for s in splits])
    costs = [c + e for c, e in zip(group_sums(chunks, splits), extras)]
    return Balanced([numbers[s - 1] for s in splits], extras, max(costs))


def _parameterless(candidates: Candidates, chosen: Sequence[int]) -> list[int]:
    """The segments that cutting at ``chosen`` leaves without trainable parameters."""
    params = stretch_sums(candidates.trainable, [candidates.positions[i] for i in chosen])
    return [g for g, count in enumerate(params) if count == 0]


def _with_parameters(candidates: Candidates, numbers: list[int]) -> list[int]:
    """The candidates ``numbers`` left once every stretch without trainable parameters
    has joined the one before it (a first stretch without any joins the one after)."""
    params = stretch_sums(candidates.trainable, [candidates.positions[i] for i in numbers])
    kept: list[int] = []
    since_kept = 0  # parameters since the last kept cut
    for i, before, after in zip(numbers, params, params[1:]):
        since_kept += before
        if since_kept and after:
            kept.append(i)
            since_kept = 0
    return kept
