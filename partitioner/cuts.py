"""Liveness analysis: where a graph can be cut.

A cut after position ``p`` of the graph's node order is a candidate when the
values computed at or before ``p`` and needed after it are few tensors (one by
default): those tensors are the boundary, everything else stays on its side.

Two kinds of values do not count as live, because a later segment can have its
own copy: non-tensor values (``x.shape`` integers, ``None`` masks, flags, the
defaults of extra ``forward`` arguments) are recomputed in every segment that
needs them, and ``get_attr`` parameters travel to the segment that uses them.
A non-tensor value computed from a tensor keeps that tensor alive, so copying
it never reaches across a cut.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

__all__ = ["Cut", "cut_candidates", "is_carried", "node_key", "paired_cuts", "tensor_count"]


@dataclass(frozen=True)
class Cut:
    """A place to cut: after node ``position``; ``boundary`` are the live tensors' names."""

    position: int
    boundary: tuple[str, ...]


def tensor_count(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, (list, tuple)):
        return sum(tensor_count(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_count(v) for v in value.values())
    return 0


def is_carried(node: fx.Node, values: dict[str, Any]) -> bool:
    """True for values a segment recomputes or fetches itself instead of receiving."""
    if node.op == "get_attr":
        return True
    if node.op == "placeholder":
        return node is not _first_placeholder(node.graph)
    return tensor_count(values.get(node.name)) == 0


def _first_placeholder(graph: fx.Graph) -> fx.Node:
    return next(n for n in graph.nodes if n.op == "placeholder")


_INPLACE_FUNCTIONS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.setitem,
}


def mutated_input(node: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """The input ``node`` writes in place, if any (``x.relu_()``, ``ReLU(inplace=True)``)."""
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_method":
        inplace = node.target.endswith("_") and not node.target.startswith("__")
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        inplace = (
            node.target in _INPLACE_FUNCTIONS
            or (name.endswith("_") and not name.startswith("__"))
            or node.kwargs.get("inplace") is True
        )
    elif node.op == "call_module":
        inplace = getattr(gm.get_submodule(node.target), "inplace", False) is True
    else:
        inplace = False
    return first if inplace else None


def cut_candidates(
    gm: fx.GraphModule, values: dict[str, Any], *, max_boundary_tensors: int = 1
) -> list[Cut]:
    """Every position after which at most ``max_boundary_tensors`` tensors are live.

    Example::

        gm = trace(model, training=False)
        cuts = cut_candidates(gm, profile(gm, x).values)
        [c.boundary for c in cuts][:3]

    Cuts that would leave a segment without computation (before the first op,
    after the last) are excluded, as are cuts whose boundary tensor a later node
    modifies in place: the next segment would overwrite a tensor the previous
    one saved for backward. Each boundary appears once, at its earliest position.
    """
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    carried = {n: is_carried(n, values) for n in nodes}

    # reach[n]: the last position that needs n, directly or through carried copies.
    reach: dict[fx.Node, int] = {}
    for n in reversed(nodes):
        reach[n] = max(
            (max(index[u], reach[u]) if carried[u] else index[u] for u in n.users),
            default=index[n],
        )
    last_mutation: dict[fx.Node, int] = {}
    for n in nodes:
        target = mutated_input(n, gm)
        if target is not None:
            last_mutation[target] = index[n]
    last_op = max(i for i, n in enumerate(nodes) if n.op.startswith("call_"))

    expiring: dict[int, list[fx.Node]] = {}
    live: dict[fx.Node, int] = {}
    cuts: list[Cut] = []
    seen: set[tuple[str, ...]] = set()
    for p, n in enumerate(nodes[:last_op]):
        if not carried[n] and reach[n] > p:
            live[n] = tensor_count(values.get(n.name))
            expiring.setdefault(reach[n], []).append(n)
        for ended in expiring.pop(p, ()):
            live.pop(ended, None)
        if not live or sum(live.values()) > max_boundary_tensors:
            continue
        boundary = tuple(sorted(live, key=index.__getitem__))
        if any(b.op == "placeholder" for b in boundary):
            continue
        if any(last_mutation.get(b, -1) > p for b in boundary):
            continue
        names = tuple(b.name for b in boundary)
        if names not in seen:
            seen.add(names)
            cuts.append(Cut(p, names))
    return cuts


def node_key(gm: fx.GraphModule) -> dict[str, tuple]:
    """A name for each node that survives re-tracing in the other train/eval mode.

    fx names nodes with global counters (``add_7``), which shift when train-only
    ops appear earlier in the graph. This key counts occurrences within the
    innermost module instead, so ``blocks.3``'s residual add keys the same in
    both graphs even when drop-path adds nodes inside ``blocks.2.drop_path``.
    """
    counts: Counter = Counter()
    keys = {}
    for n in gm.graph.nodes:
        stack = n.meta.get("nn_module_stack") or {}
        scope = next(reversed(stack.values()))[0] if stack else ""
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        base = (scope, n.op, target)
        keys[n.name] = (*base, counts[base])
        counts[base] += 1
    return keys


def paired_cuts(
    train: tuple[fx.GraphModule, dict[str, Any]],
    evaluation: tuple[fx.GraphModule, dict[str, Any]],
    *,
    max_boundary_tensors: int = 1,
) -> list[tuple[Cut, Cut]]:
    """The cuts valid in both the training and the evaluation graph, each with its twin.

    Example::

        pairs = paired_cuts((train_gm, train_values), (eval_gm, eval_values))
        [train_cut.boundary for train_cut, _ in pairs][:3]

    ``train`` and ``evaluation`` are a graph and its profiled values. Twins are matched
    by ``node_key``; a cut is kept only when its twin comes after the previous
    kept one's, so the pairs are in the same order in both graphs.
    """
    found = []
    for gm, values in (train, evaluation):
        keys = node_key(gm)
        cuts = cut_candidates(gm, values, max_boundary_tensors=max_boundary_tensors)
        found.append({tuple(keys[b] for b in c.boundary): c for c in cuts})
    paired: list[tuple[Cut, Cut]] = []
    for key, cut in found[0].items():
        twin = found[1].get(key)
        if twin is not None and (not paired or twin.position > paired[-1][1].position):
            paired.append((cut, twin))
    return paired
