"""``analyze``, the ``Analysis`` it returns, and the ``Partition`` that one makes.

An Analysis is everything known about a model before choosing cuts; ``partition``
(balanced) and ``split_at`` (explicit) turn it into a Partition: the runnable
result, and a plan that ``to_json`` saves and ``Partition.from_json`` re-applies.
Partition lives here because each class builds the other (``from_json`` analyses
the model again), and modules never import each other in a circle.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from partitioner.boundary import Boundary, TensorSpec
from partitioner.choice import Candidates, choose_cuts, trainable_params
from partitioner.cost import NodeCost, measure_node_times, profile
from partitioner.cuts import Cut, paired_cuts
from partitioner.errors import PartitionError
from partitioner.layout import UNKNOWN, tensor_layouts
from partitioner.objectives import (
    ExtraCost,
    SegmentStats,
    imbalance,
    objective_cost,
    segment_stats,
    stretch_sums,
)
from partitioner.saved_plan import PLAN_VERSION, read_plan
from partitioner.split import Segment, assign_ownership, segment_graphs
from partitioner.trace import trace

__all__ = ["Analysis", "Partition", "analyze"]


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
    saved_by: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Segment graphs cut so far, by graph and edges: a planner splits many K, whose
    # segments recur (graphs are never changed once cut, so they can be shared).
    graphs: dict = field(default_factory=dict, repr=False)

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
        return stretch_sums(self.node_costs(objective), [c.position for c, _ in self.cuts])

    @cached_property
    def layouts(self) -> dict[str, str]:
        """The memory layout of every tensor of the training graph, by node name.

        Derived by propagation from the input (see ``partitioner.layout``);
        ``"unknown"`` where the graph does not tell.
        """
        return tensor_layouts(self.train, self.train_values)

    @cached_property
    def _trainable_params(self) -> list[int]:
        """Trainable parameters each node of the training graph brings to its segment."""
        return trainable_params(self.train)

    def check_k(self, k: int) -> None:
        """Raise ``PartitionError`` unless ``k`` is an int from 1 to ``max_k``."""
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
        candidates = Candidates(
            positions=[cut.position for cut, _ in self.cuts],
            layout_known=[self._layout_known(i) for i in range(len(self.cuts))],
            trainable=self._trainable_params,
            model_name=type(self.model).__name__,
        )
        best = choose_cuts(candidates, k, per_node, split_costs)
        return self.split(best.chosen, objective, best.extras)

    def _layout_known(self, i: int) -> bool:
        return all(self.layouts.get(name) != UNKNOWN for name in self.cuts[i][0].boundary)

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

    def saved_across(self, boundary: Boundary) -> tuple[int, int]:
        """Bytes of the boundary's tensors that nodes before the cut save, and nodes after it.

        Example::

            before, after = analysis.saved_across(part.boundaries[0])

        The profile charges a stored tensor once, to the first node that saves it,
        but a segment run on its own (a local-learning unit, a pipeline stage)
        saves its own copy of its input: a boundary saved on both sides (a ReLU's
        output that the next convolution reads) is saved twice.
        """
        cut = self.position_of(boundary)
        before = after = 0
        for name in (t.node for t in boundary.tensors):
            value = self.train_values[name]
            nbytes = value.numel() * value.element_size()
            where = [self._node_positions[saver] for saver in self.saved_by.get(name, ())]
            before += nbytes if any(p <= cut for p in where) else 0
            after += nbytes if any(p > cut for p in where) else 0
        return before, after

    def position_of(self, boundary: Boundary) -> int:
        """The graph position of the cut candidate whose boundary is ``boundary``."""
        return self._cut_positions[tuple(t.node for t in boundary.tensors)]

    @cached_property
    def _cut_positions(self) -> dict[tuple[str, ...], int]:
        return {cut.boundary: cut.position for cut, _ in self.cuts}

    @cached_property
    def _node_positions(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    def split(
        self, chosen: Sequence[int], objective: str, extra_costs: Sequence[float] | None = None
    ) -> Partition:
        """Split at the candidates numbered ``chosen`` (indices into ``cuts``)."""
        cuts = [self.cuts[i] for i in chosen]
        train_graphs = segment_graphs(
            self.train,
            self.train_values,
            [(c.position, c.boundary) for c, _ in cuts],
            cache=self.graphs,
        )
        eval_graphs = segment_graphs(
            self.eval,
            self.eval_values,
            [(e.position, e.boundary) for _, e in cuts],
            cache=self.graphs,
        )
        segments = [Segment(self.model, t, e) for t, e in zip(train_graphs, eval_graphs)]
        assign_ownership(self.model, segments)
        boundaries = [self.boundary(cut) for cut, _ in cuts]
        train_cuts = [cut for cut, _ in cuts]
        stats = segment_stats(self.train, self.train_values, self.costs, train_cuts, segments)
        x = self.example_input
        return Partition(
            segments, boundaries, stats, objective, tuple(x.shape), str(x.dtype), extra_costs
        )

    def _spec(self, name: str) -> TensorSpec:
        value = self.train_values[name]
        return TensorSpec(
            name, tuple(value.shape), str(value.dtype), self.layouts.get(name, "other")
        )


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
    paired = paired_cuts(
        (train_gm, train_profile.values),
        (eval_gm, eval_profile.values),
        max_boundary_tensors=max_boundary_tensors,
    )
    return Analysis(
        model,
        example_input,
        train_gm,
        eval_gm,
        train_profile.values,
        eval_profile.values,
        train_profile.costs,
        paired,
        train_profile.saved_by,
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
    def segment_costs(self) -> list[float]:
        """Each segment's cost under the objective, its extra costs included."""
        return [objective_cost(s, self.objective) + e for s, e in zip(self.stats, self.extra_costs)]

    @property
    def imbalance(self) -> float:
        return imbalance(self.segment_costs)

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
