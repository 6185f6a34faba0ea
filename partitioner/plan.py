"""``analyze`` and ``partition``: choose cuts, split, and describe the result.

A Partition is both the runnable result (an ``nn.Module`` whose segments chained
reproduce the model) and a plan: ``to_json()`` records where it cut and what each
segment costs, and ``Partition.from_json`` re-applies those cuts to a fresh
instance of the same model.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from itertools import accumulate
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from partitioner.balance import group_sums, min_max_partition
from partitioner.boundary import Boundary, TensorSpec
from partitioner.cost import NodeCost, measure_node_times, profile
from partitioner.cuts import Cut, cut_candidates, node_key, tensor_count
from partitioner.errors import PartitionError, PartitionWarning
from partitioner.layout import UNKNOWN, tensor_layouts
from partitioner.split import Segment, segment_graphs
from partitioner.trace import trace

__all__ = [
    "OBJECTIVES",
    "check_objective",
    "SegmentStats",
    "Analysis",
    "Partition",
    "analyze",
    "partition",
    "read_plan",
    "SavedPlan",
]

OBJECTIVES = ("flops", "memory", "params", "time")
PLAN_VERSION = 1

ExtraCost = Callable[[Boundary], tuple[float, float]]
"""What a boundary adds, under the objective, to the segment that ends there and to
the one that starts there; e.g. the local head and the context bridge that local
learning puts at each cut."""


def check_objective(objective: str) -> None:
    """Raise ``PartitionError`` unless ``objective`` is one of ``OBJECTIVES``."""
    if objective not in OBJECTIVES:
        raise PartitionError(
            f"unknown objective '{objective}'; choose one of {', '.join(OBJECTIVES)}"
        )


def objective_cost(cost: NodeCost | SegmentStats, objective: str) -> float:
    """The number ``objective`` balances, read off a node's or a segment's costs."""
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
    """Largest over mean segment cost: 1.0 is perfect balance."""
    mean = sum(costs) / len(costs)
    return max(costs) / mean if mean > 0 else 1.0


def _stretch_sums(per_node: Sequence[float], positions: Sequence[int]) -> list[float]:
    """Sum of ``per_node`` over each stretch that cuts after ``positions`` make."""
    prefix = [0, *accumulate(per_node)]
    bounds = [0, *(p + 1 for p in positions), len(per_node)]
    return [prefix[b] - prefix[a] for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class _Balanced:
    """One balancing: the cuts it chose and what its segments cost.

    ``chosen`` indexes ``Analysis.cuts``; ``extras`` are what split costs add to
    each segment; ``peak`` is the costliest segment's cost, extras included.
    """

    chosen: list[int]
    extras: list[float]
    peak: float


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


@dataclass
class Analysis:
    """Everything known about a model before choosing cuts.

    ``nodes`` and ``costs`` follow the training graph's node order; ``cuts`` are
    the candidates valid in both the training and the evaluation graph, each
    paired with its twin in the evaluation graph; ``layouts`` name each tensor's
    memory layout.
    """

    model: nn.Module
    example_input: torch.Tensor
    train: fx.GraphModule
    eval: fx.GraphModule
    train_values: dict[str, Any]
    eval_values: dict[str, Any]
    costs: dict[str, NodeCost]
    cuts: list[tuple[Cut, Cut]]

    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.train.graph.nodes)

    @property
    def max_k(self) -> int:
        return len(self.cuts) + 1

    def node_costs(self, objective: str) -> list[float]:
        """Objective cost of every node of the training graph, in order."""
        return [objective_cost(self.costs[n.name], objective) for n in self.nodes]

    def chunk_costs(self, objective: str) -> list[float]:
        """Objective cost of each stretch between consecutive cut candidates."""
        return _stretch_sums(self.node_costs(objective), [c.position for c, _ in self.cuts])

    @cached_property
    def layouts(self) -> dict[str, str]:
        """The memory layout of every tensor of the training graph, by node name.

        Derived by propagation from the input (see ``partitioner.layout``);
        ``"unknown"`` where the graph does not tell.
        """
        return tensor_layouts(self.train, self.train_values)

    @cached_property
    def _trainable_params(self) -> list[int]:
        """Trainable parameters each node of the training graph brings to its segment.

        A module's count at its call, a fetched parameter's at its first user (it
        travels there); a parameter used twice counts once, where first used.
        """
        nodes = self.nodes
        order = {n: i for i, n in enumerate(nodes)}
        fetched = dict(self.train.named_parameters(remove_duplicate=False))
        counts = [0] * len(nodes)
        seen: set[int] = set()
        for i, n in enumerate(nodes):
            if n.op == "call_module":
                params = list(self.train.get_submodule(n.target).parameters())
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

    def check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_k:
            raise PartitionError(
                f"k must be between 1 and {self.max_k} for {type(self.model).__name__} "
                f"(it has {len(self.cuts)} cut points), got {k}"
            )

    def partition(
        self, k: int, objective: str = "flops", *, extra_cost: ExtraCost | None = None
    ) -> Partition:
        """Balance ``k`` segments under ``objective`` and split the model there.

        Example::

            analysis = analyze(model, torch.randn(1, 3, 32, 32))
            parts = {k: analysis.partition(k) for k in (2, 4, 8)}

        ``extra_cost(boundary) -> (before, after)``, in the objective's units, is
        added to the segments on either side of every cut considered.

        The cuts minimise the costliest segment (``min_max_partition``), with two
        rules the bare optimum does not follow:

        * Every segment has trainable parameters. When the optimum leaves one
          without (a lone permute or activation between two cut candidates), every
          stretch without parameters joins the segment before it (a first stretch
          without any, the one after it) and the balancing is redone over what is
          left. When ``k`` is more than the stretches that have parameters, the
          optimum stands and a ``PartitionWarning`` says that ``k`` leaves no
          other choice.
        * Cuts whose memory layout is known are preferred: if they balance as
          well as all candidates do, only they are used. A cut at a tensor of
          unknown layout (``Boundary.layout == "unknown"``) is chosen only when it
          balances better, and ``split_at`` refuses it.
        """
        self.check_k(k)
        per_node = self.node_costs(objective)
        split_costs = None
        if extra_cost is not None:
            split_costs = [extra_cost(self.boundary(cut)) for cut, _ in self.cuts]
        candidates = list(range(len(self.cuts)))
        best = self._balance(candidates, k, per_node, split_costs)
        known = [i for i in candidates if self._layout_known(i)]
        if len(known) < len(candidates) and len(known) >= k - 1:
            alternative = self._balance(known, k, per_node, split_costs)
            if alternative.peak <= best.peak * (1 + 1e-9):
                best, candidates = alternative, known
        empty = self._parameterless(best.chosen)
        if empty:
            merged = self._with_parameters(candidates)
            if len(merged) >= k - 1:
                best = self._balance(merged, k, per_node, split_costs)
            else:
                warnings.warn(
                    f"k={k} leaves no other choice than {len(empty)} segment(s) without "
                    f"trainable parameters: only {len(merged) + 1} stretches between the "
                    f"cut candidates of {type(self.model).__name__} have any",
                    PartitionWarning,
                    stacklevel=2,
                )
        return self.split(best.chosen, objective, best.extras)

    def _balance(
        self,
        candidates: list[int],
        k: int,
        per_node: list[float],
        split_costs: list[tuple[float, float]] | None,
    ) -> _Balanced:
        """Min-max balance ``k`` segments using only the cut candidates numbered ``candidates``."""
        chunks = _stretch_sums(per_node, [self.cuts[i][0].position for i in candidates])
        pairs = None if split_costs is None else [split_costs[i] for i in candidates]
        splits = min_max_partition(chunks, k, split_costs=pairs)
        extras = [0.0] * k
        for g, s in enumerate(splits if pairs is not None else ()):
            extras[g] += pairs[s - 1][0]
            extras[g + 1] += pairs[s - 1][1]
        costs = [c + e for c, e in zip(group_sums(chunks, splits), extras)]
        return _Balanced([candidates[s - 1] for s in splits], extras, max(costs))

    def _layout_known(self, i: int) -> bool:
        return all(self.layouts.get(name) != UNKNOWN for name in self.cuts[i][0].boundary)

    def _parameterless(self, chosen: Sequence[int]) -> list[int]:
        """The segments that cutting at ``chosen`` leaves without trainable parameters."""
        params = _stretch_sums(self._trainable_params, [self.cuts[i][0].position for i in chosen])
        return [g for g, count in enumerate(params) if count == 0]

    def _with_parameters(self, candidates: list[int]) -> list[int]:
        """The ``candidates`` left once every stretch without trainable parameters has
        joined the one before it (a first stretch without any joins the one after)."""
        params = _stretch_sums(
            self._trainable_params, [self.cuts[i][0].position for i in candidates]
        )
        kept: list[int] = []
        since_kept = 0  # parameters since the last kept cut
        for i, before, after in zip(candidates, params, params[1:]):
            since_kept += before
            if since_kept and after:
                kept.append(i)
                since_kept = 0
        return kept

    def split_at(
        self,
        cuts: Sequence[str | Sequence[str]],
        objective: str = "flops",
        *,
        require_layout: bool = True,
    ) -> Partition:
        """Split after the named nodes, in order: an explicit plan instead of balancing.

        Example::

            part = analyze(model, x).split_at(["layer1_4_act2", "layer2_4_act2"])

        A cut is a node name, or a tuple of names for a multi-tensor boundary. A cut
        at a tensor whose memory layout the graph does not tell is refused, since
        whatever reads the boundary could not tell its channels from its space;
        ``require_layout=False`` accepts it (a pipeline does not read layouts).
        """
        index = {train.boundary: i for i, (train, _) in enumerate(self.cuts)}
        chosen = []
        for cut in cuts:
            names = (cut,) if isinstance(cut, str) else tuple(cut)
            if names not in index:
                close = difflib.get_close_matches(names[0], [b[0] for b in index], n=3)
                hint = f"; close ones: {', '.join(close)}" if close else ""
                raise PartitionError(
                    f"'{', '.join(names)}' is not a cut point of {type(self.model).__name__} "
                    f"(`contsup split` lists where it can be cut){hint}"
                )
            if require_layout:
                self._check_layout(names)
            chosen.append(index[names])
        if chosen != sorted(set(chosen)):
            raise PartitionError("cuts must be distinct and in the order of the model's graph")
        return self.split(chosen, objective)

    def _check_layout(self, names: tuple[str, ...]) -> None:
        for name in names:
            if self.layouts.get(name) == UNKNOWN:
                shape = tuple(self.train_values[name].shape)
                raise PartitionError(
                    f"cannot cut after '{name}': the memory layout of its tensor {shape} "
                    "cannot be determined from the graph, so its channels cannot be told "
                    "from its space; cut at a neighbouring node whose layout is known"
                )

    def boundary(self, cut: Cut) -> Boundary:
        """The boundary spec of a cut candidate of the training graph."""
        return Boundary(tuple(self._spec(name) for name in cut.boundary))

    def split(
        self, chosen: Sequence[int], objective: str, extra_costs: Sequence[float] | None = None
    ) -> Partition:
        """Split at the candidates numbered ``chosen`` (indices into ``cuts``)."""
        cuts = [self.cuts[i] for i in chosen]
        train_graphs = segment_graphs(
            self.train, self.train_values, [(c.position, c.boundary) for c, _ in cuts]
        )
        eval_graphs = segment_graphs(
            self.eval, self.eval_values, [(e.position, e.boundary) for _, e in cuts]
        )
        segments = [Segment(self.model, t, e) for t, e in zip(train_graphs, eval_graphs)]
        _assign_ownership(self.model, segments)
        boundaries = [self.boundary(cut) for cut, _ in cuts]
        stats = self._stats(cuts, segments)
        x = self.example_input
        return Partition(
            segments, boundaries, stats, objective, tuple(x.shape), str(x.dtype), extra_costs
        )

    def _spec(self, name: str) -> TensorSpec:
        value = self.train_values[name]
        return TensorSpec(
            name, tuple(value.shape), str(value.dtype), self.layouts.get(name, "other")
        )

    def _stats(
        self, cuts: list[tuple[Cut, Cut]], segments: Sequence[Segment]
    ) -> list[SegmentStats]:
        nodes = self.nodes
        bounds = [-1, *(c.position for c, _ in cuts), len(nodes) - 1]
        output_value = fx.map_arg(nodes[-1].args[0], lambda n: self.train_values[n.name])
        ends = [
            self.train_values[cut.boundary[0]] if len(cut.boundary) == 1 else None
            for cut, _ in cuts
        ] + [output_value]
        result = []
        for (a, b), segment, end in zip(zip(bounds, bounds[1:]), segments, ends):
            ops = [  # the ops that compute tensors, not asserts or shape arithmetic
                n
                for n in nodes[a + 1 : b + 1]
                if n.op.startswith("call_") and tensor_count(self.train_values.get(n.name))
            ]
            costs = [self.costs[n.name] for n in nodes[a + 1 : b + 1]]
            result.append(
                SegmentStats(
                    first_node=ops[0].name if ops else "",
                    last_node=ops[-1].name if ops else "",
                    output_shape=tuple(end.shape) if isinstance(end, torch.Tensor) else None,
                    flops=sum(c.flops for c in costs),
                    activation_bytes=sum(c.saved_bytes for c in costs),
                    params=sum(p.numel() for p in segment.parameters()),
                    param_bytes=sum(c.param_bytes for c in costs),
                    time_s=sum(c.time_s for c in costs),
                )
            )
        return result


def analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    measure_time: bool = False,
    max_boundary_tensors: int = 1,
    leaf_modules: Iterable[type[nn.Module]] = (),
) -> Analysis:
    """Trace, profile and find every valid cut of ``model``, without splitting it.

    Example::

        analysis = analyze(model, torch.randn(1, 3, 32, 32))
        analysis.max_k, analysis.chunk_costs("flops")[:3]
        part = analysis.partition(k=4)

    ``measure_time`` also times each node on ``example_input``'s device, which the
    ``time`` objective needs.
    """
    leaf_modules = tuple(leaf_modules)
    train_gm = trace(model, training=True, leaf_modules=leaf_modules)
    eval_gm = trace(model, training=False, leaf_modules=leaf_modules)
    train_profile = profile(train_gm, example_input)
    eval_profile = profile(eval_gm, example_input, costs=False)  # costs come from training
    if measure_time:
        if example_input.device.type == "meta":
            raise PartitionError("the time objective needs a model and input on a real device")
        for name, seconds in measure_node_times(train_gm, example_input).items():
            train_profile.costs[name].time_s = seconds
    found = {}
    for mode, gm, values in (
        ("train", train_gm, train_profile.values),
        ("eval", eval_gm, eval_profile.values),
    ):
        keys = node_key(gm)
        cuts = cut_candidates(gm, values, max_boundary_tensors=max_boundary_tensors)
        found[mode] = {tuple(keys[b] for b in c.boundary): c for c in cuts}
    paired: list[tuple[Cut, Cut]] = []
    for key, cut in found["train"].items():
        twin = found["eval"].get(key)
        # Keep only cuts at the same place in both graphs, in the same order.
        if twin is not None and (not paired or twin.position > paired[-1][1].position):
            paired.append((cut, twin))
    return Analysis(
        model,
        example_input,
        train_gm,
        eval_gm,
        train_profile.values,
        eval_profile.values,
        train_profile.costs,
        paired,
    )


class Partition(nn.Module):
    """K segments that, chained, compute exactly what the model computes.

    Example::

        part = partitioner.partition(model, torch.randn(1, 3, 32, 32), k=4)
        torch.equal(part(x), model(x))      # True in eval mode
        part.segments[1], part.boundaries[0].shape, part.imbalance

    Attributes:
        segments: ``nn.ModuleList`` of ``Segment``; segment i consumes segment i-1's output.
        boundaries: K-1 ``Boundary`` specs (node name, shape, dtype, layout).
        stats: K ``SegmentStats`` (first/last node, output shape, FLOPs, bytes, params).
        objective: what was balanced; ``imbalance``: max / mean segment cost under it.
        extra_costs: K costs under the objective that ``extra_cost`` added to the
            segments while balancing (zeros without it); ``imbalance`` counts them.
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        boundaries: Sequence[Boundary],
        stats: Sequence[SegmentStats],
        objective: str,
        input_shape: tuple[int, ...],
        input_dtype: str,
        extra_costs: Sequence[float] | None = None,
    ):
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.boundaries = list(boundaries)
        self.stats = list(stats)
        self.objective = objective
        self.input_shape = input_shape
        self.input_dtype = input_dtype
        self.extra_costs = list(extra_costs) if extra_costs is not None else [0.0] * len(stats)

    @property
    def k(self) -> int:
        return len(self.segments)

    @property
    def imbalance(self) -> float:
        costs = [objective_cost(s, self.objective) for s in self.stats]
        return imbalance([c + e for c, e in zip(costs, self.extra_costs)])

    def forward(self, x: torch.Tensor) -> Any:
        x = self.segments[0](x)
        for segment in self.segments[1:]:
            # A multi-tensor boundary arrives as a tuple; a single tensor never does.
            x = segment(*x) if isinstance(x, tuple) else segment(x)
        return x

    def to_json(self, **metadata: Any) -> str:
        """The plan as JSON: cut nodes, boundary specs and segment stats (plus ``metadata``)."""
        return json.dumps(
            {
                **metadata,
                "version": PLAN_VERSION,
                "objective": self.objective,
                "k": self.k,
                "imbalance": self.imbalance,
                "input_shape": list(self.input_shape),
                "input_dtype": self.input_dtype,
                "cuts": [[t.node for t in b.tensors] for b in self.boundaries],
                "boundaries": [[asdict(t) for t in b.tensors] for b in self.boundaries],
                "segments": [asdict(s) for s in self.stats],
                "extra_costs": self.extra_costs,
            },
            indent=2,
        )

    def summary(self, **metadata: Any) -> dict[str, Any]:
        """The plan's headline as a dict (``contsup split --json``): K, objective,
        imbalance and per segment its nodes, costs and output shape (plus ``metadata``).

        Example::

            part.summary(model="resnet20")["segments"][0]["flops"]

        ``to_json`` is the plan to re-apply; this is what to read (no cuts or boundaries).
        """
        return {
            **metadata,
            "k": self.k,
            "objective": self.objective,
            "imbalance": self.imbalance,
            "segments": [
                {
                    "index": i,
                    "first_node": s.first_node,
                    "last_node": s.last_node,
                    "params": s.params,
                    "flops": s.flops,
                    "activation_bytes": s.activation_bytes,
                    "output_shape": list(s.output_shape) if s.output_shape else None,
                }
                for i, s in enumerate(self.stats)
            ],
        }

    @classmethod
    def from_json(
        cls, text: str, model: nn.Module, example_input: torch.Tensor | None = None, **kwargs: Any
    ) -> Partition:
        """Re-apply a saved plan to a fresh instance of the model it was made for.

        Example::

            model = timm.create_model("resnet110")
            part = Partition.from_json(Path("plan.json").read_text(), model)

        ``example_input`` defaults to a tensor of the plan's input shape; ``kwargs``
        go to ``analyze``. A plan that does not fit the model raises ``PartitionError``.
        """
        plan = read_plan(text)
        if example_input is None:
            example_input = torch.empty(plan.input_shape, dtype=plan.input_dtype, device="meta")
        elif tuple(example_input.shape[1:]) != plan.input_shape[1:]:
            raise PartitionError(
                f"the plan was made for inputs of shape {plan.input_shape[1:]}, not "
                f"{tuple(example_input.shape[1:])}"
            )
        objective = plan.objective
        analysis = analyze(model, example_input, measure_time=objective == "time", **kwargs)
        try:
            # The plan's own cuts, whatever their layouts: partition() may have chosen
            # one of unknown layout, and re-applying must give the same segments.
            return analysis.split_at(plan.cuts, objective, require_layout=False)
        except PartitionError as error:
            raise PartitionError(f"the plan does not fit this model: {error}") from error


@dataclass(frozen=True)
class SavedPlan:
    """What a plan file (``Partition.to_json``) says: where to cut, and for what input.

    ``model`` is the model name ``contsup split --save`` records, or None.
    """

    cuts: list[tuple[str, ...]]
    objective: str
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    model: str | None


def read_plan(text: str) -> SavedPlan:
    """Parse a plan's JSON (data only, never code); ``PartitionError`` if it is not one.

    Example::

        plan = read_plan(Path("plan.json").read_text())
        plan.cuts, plan.input_shape
    """
    try:
        data = json.loads(text)
        return SavedPlan(
            cuts=[tuple(c) for c in data["cuts"]],
            objective=data["objective"],
            input_shape=tuple(data["input_shape"]),
            input_dtype=getattr(torch, data["input_dtype"].removeprefix("torch.")),
            model=data.get("model"),
        )
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise PartitionError(f"not a partition plan ({type(error).__name__}: {error})") from error


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


def _assign_ownership(model: nn.Module, segments: Sequence[Segment]) -> None:
    """Every parameter and buffer in exactly one segment; unused ones join a relative."""
    owner: dict[int, int] = {}
    for i, segment in enumerate(segments):
        for name, t in [*segment.named_parameters(), *segment.named_buffers()]:
            if owner.setdefault(id(t), i) != i:
                raise PartitionError(
                    f"'{name}' is used by segments {owner[id(t)]} and {i}; tied weights "
                    "cannot be split across segments (untie them or use a smaller k)"
                )
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        if id(t) not in owner:
            owner[id(t)] = _nearest_relative(name, segments)
            segments[owner[id(t)]]._adopt(model, name)


def _nearest_relative(path: str, segments: Sequence[Segment]) -> int:
    """The segment holding the closest relative of ``path`` (the last one if none does)."""
    names = [[n for n, _ in (*s.named_parameters(), *s.named_buffers())] for s in segments]
    parts = path.split(".")[:-1]
    while parts:
        prefix = ".".join(parts) + "."
        for i, segment_names in enumerate(names):
            if any(n.startswith(prefix) for n in segment_names):
                return i
        parts.pop()
    return len(segments) - 1
