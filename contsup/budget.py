"""What local learning adds to a backbone at each boundary, measured on the meta device.

Every boundary gets a local head (scored at the end of the segment before it)
and a context bridge (run at the start of the segment after it). ``AuxCost``
holds their parameters, forward FLOPs and bytes saved for backward. The same
numbers serve two purposes: ``extra_cost_hook`` (``balance_hook`` for an aux
config) lets the partitioner balance segments with their aux modules counted,
and ``aux_budget`` reports them next to the backbone's (``contsup split
--context``, ``contsup bench``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

import partitioner
from contsup.auxiliary import AuxConfig, BoundaryTooNarrowError
from contsup.context import gather_sources
from contsup.geometry import Geometry, LayoutError, geometry_of
from contsup.memory import SavedTensorTracker
from contsup.meta_ops import MemoizedMetaOps
from partitioner.cost import count_flops
from partitioner.objectives import segment_extras

STATIC_COPIES = 3  # a parameter, its gradient and SGD's momentum buffer

__all__ = [
    "AuxCost",
    "aux_costs",
    "extra_cost_hook",
    "balance_hook",
    "balanced_partition",
    "AuxBudget",
    "aux_budget",
]


@dataclass(frozen=True)
class AuxCost:
    """Parameters, forward FLOPs and bytes saved for backward of one aux module."""

    params: int = 0
    param_bytes: int = 0
    flops: int = 0
    saved_bytes: int = 0

    def __add__(self, other: AuxCost) -> AuxCost:
        return AuxCost(
            self.params + other.params,
            self.param_bytes + other.param_bytes,
            self.flops + other.flops,
            self.saved_bytes + other.saved_bytes,
        )

    def halved(self) -> AuxCost:
        """The FLOPs and saved bytes of half the batch (parameters stay)."""
        return AuxCost(self.params, self.param_bytes, self.flops // 2, self.saved_bytes // 2)

    def under(self, objective: str) -> float:
        """This cost in the units the partitioner balances under ``objective``.

        Under ``memory`` a cut's aux modules cost what they save for backward plus
        their parameters, gradients and momentum: memory the cut itself adds.
        """
        return {
            "flops": self.flops,
            "memory": self.saved_bytes + STATIC_COPIES * self.param_bytes,
            "params": self.param_bytes,
        }.get(objective, 0.0)


def _measure(module: nn.Module, *args, owned: Sequence[torch.Tensor] = ()) -> AuxCost:
    """Run ``module(*args)`` twice on meta tensors: once for FLOPs, once for saved bytes.

    ``owned`` are inputs whose storage the segment already holds (not counted).
    """
    params = list(module.parameters())
    with MemoizedMetaOps():  # every cut candidate's head runs the same norms
        with SavedTensorTracker([*params, *owned], forward_only=True) as tracker:
            module(*args)
        flops = count_flops(module, *args)
    return AuxCost(
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        flops=flops,
        saved_bytes=tracker.peak_bytes,
    )


def _meta(geometry: Geometry, batch: int) -> torch.Tensor:
    g = geometry
    shape = {
        "NCHW": (batch, g.channels, g.height, g.width),
        "NHWC": (batch, g.height, g.width, g.channels),
        "NLC": (batch, g.prefix_tokens + g.height * g.width, g.channels),
        "NC": (batch, g.channels),
    }[g.layout]
    return torch.empty(shape, device="meta")


def aux_costs(
    config: AuxConfig,
    target: Geometry,
    sources: Sequence[Geometry],
    batch: int,
    held: bool = True,
) -> tuple[AuxCost, AuxCost]:
    """(head, bridge) costs at a boundary of ``target`` whose bridge reads ``sources``.

    Example::

        head, bridge = aux_costs(learner.aux_config, target, [previous], batch=32)

    The head (and decoder) read the segment's output. ``held``: the segment saves
    that output for its own backward, so a head saving it too adds nothing. The
    bridge's inputs are detached, as in training. Results are remembered:
    balancing prices the same few shapes at every K tried.
    """
    return _aux_costs(config, target, tuple(sources), batch, held)


@functools.lru_cache(maxsize=4096)
def _aux_costs(
    config: AuxConfig, target: Geometry, sources: tuple[Geometry, ...], batch: int, held: bool
) -> tuple[AuxCost, AuxCost]:
    if batch == 1:  # batch norm refuses to train on one value; costs are per sample
        head, bridge = aux_costs(config, target, sources, 2, held)
        return head.halved(), bridge.halved()
    with torch.device("meta"):
        head, decoder, bridge = config.modules_at(target, sources)
    h = _meta(target, batch).requires_grad_()
    owned = [h] if held else []
    head_cost = _measure(head, h, owned=owned)
    if decoder is not None:
        head_cost = head_cost + _measure(decoder, h, owned=owned)
    image = _meta(config.image, batch)
    bridge_cost = _measure(bridge, h.detach(), [_meta(g, batch) for g in sources], image)
    return head_cost, bridge_cost


def extra_cost_hook(
    model: nn.Module,
    objective: str,
    cost_at: Callable[[Geometry, partitioner.Boundary], tuple[AuxCost, AuxCost]],
) -> partitioner.plan.ExtraCost:
    """The partitioner's ``extra_cost``: a cut's head before it, its bridge after it.

    Example::

        hook = extra_cost_hook(model, "memory", lambda g, b: aux_costs(config, g, [g], 32))
        part = partitioner.partition(model, x, k, "memory", extra_cost=hook)

    ``cost_at(geometry, boundary)`` prices the aux modules at one boundary
    (``aux_costs`` remembers its results: most candidates share a few shapes).
    """

    def extra_cost(boundary: partitioner.Boundary) -> tuple[float, float]:
        # A cut local learning cannot use (wrap refuses it) is never worth choosing.
        if len(boundary.tensors) != 1:
            return math.inf, math.inf
        try:
            head, bridge = cost_at(geometry_of(boundary.tensors[0], model), boundary)
        except (LayoutError, BoundaryTooNarrowError):
            return math.inf, math.inf
        return head.under(objective), bridge.under(objective)

    return extra_cost


def balance_hook(
    analysis: partitioner.Analysis,
    objective: str,
    config: AuxConfig,
    chosen: Sequence[partitioner.Boundary] | None = None,
) -> partitioner.plan.ExtraCost:
    """The partitioner's ``extra_cost`` for ``config``: each cut priced with its aux modules.

    Example::

        analysis = partitioner.analyze(model, x)
        part = analysis.partition(k, "memory",
                                  extra_cost=balance_hook(analysis, "memory", config))

    A bridge's ``Rn`` encoders read earlier boundaries, unknown before the cuts
    are. Without ``chosen`` they are priced as if they read tensors shaped like
    their own boundary; with ``chosen`` (the boundaries of an earlier balancing)
    a candidate's bridge reads the chosen boundaries before it, which prices the
    chosen cuts exactly. A unit runs on its own, so what the profile charges
    once may be saved twice (``Analysis.saved_across``): a head that saves a
    boundary its segment does not, and a segment that saves its input when the
    one before saves it too.
    """
    batch = analysis.example_input.shape[0]
    earlier = [
        (analysis.position_of(b), geometry_of(b.tensors[0], analysis.model)) for b in chosen or ()
    ]

    def cost_at(target: Geometry, boundary: partitioner.Boundary) -> tuple[AuxCost, AuxCost]:
        if chosen is None:
            sources = [target] * config.mode.recent
        else:
            position = analysis.position_of(boundary)
            before = [g for p, g in earlier if p < position]
            sources = gather_sources(len(before), config.mode, before, config.image)
        before, after = analysis.saved_across(boundary)
        head, bridge = aux_costs(config, target, sources, batch, held=before > 0)
        # The unit after the cut saves its own copy of a boundary the one before saves.
        return head, bridge + AuxCost(saved_bytes=after if before else 0)

    return extra_cost_hook(analysis.model, objective, cost_at)


REBALANCINGS = 2  # balancings after the first, each pricing Rn encoders at the last cuts


def balanced_partition(
    analysis: partitioner.Analysis, k: int, objective: str, config: AuxConfig
) -> partitioner.Partition:
    """``k`` segments balanced with each cut's head and bridge counted.

    Example::

        part = balanced_partition(partitioner.analyze(model, x), 16, "memory", config)

    With ``Rn`` context the balance runs again with each candidate's bridge reading
    the boundaries the last balancing chose (``balance_hook``'s ``chosen``), while
    that lowers the costliest segment priced at its own cuts. The partition's
    ``extra_costs`` are those of its own cuts.
    """
    part = analysis.partition(k, objective, extra_cost=balance_hook(analysis, objective, config))
    if not config.mode.recent:
        return part
    best, peak = _priced(analysis, part, objective, config)
    for _ in range(REBALANCINGS):
        hook = balance_hook(analysis, objective, config, chosen=part.boundaries)
        with warnings.catch_warnings():  # the first balancing warned already
            warnings.simplefilter("ignore", partitioner.PartitionWarning)
            part = analysis.partition(k, objective, extra_cost=hook)
        part, part_peak = _priced(analysis, part, objective, config)
        if part_peak >= peak:
            break
        best, peak = part, part_peak
    return best


def _priced(
    analysis: partitioner.Analysis, part: partitioner.Partition, objective: str, config: AuxConfig
) -> tuple[partitioner.Partition, float]:
    """``part`` with the extra costs of its own cuts, and its costliest segment's cost."""
    hook = balance_hook(analysis, objective, config, chosen=part.boundaries)
    part.extra_costs = segment_extras([hook(b) for b in part.boundaries])
    return part, max(part.segment_costs)


@dataclass(frozen=True)
class AuxBudget:
    """Per segment: the backbone's cost and the aux modules' (its head and input bridge)."""

    backbone: list[AuxCost]
    heads: list[AuxCost]  # K entries; the last segment's is the model's own (zero)
    bridges: list[AuxCost]  # K entries; the first segment's is zero

    @property
    def aux(self) -> list[AuxCost]:
        return [h + b for h, b in zip(self.heads, self.bridges)]

    def fractions(self) -> dict[str, float]:
        """Total aux params, FLOPs and saved bytes as fractions of the backbone's."""
        aux = sum(self.aux, AuxCost())
        backbone = sum(self.backbone, AuxCost())
        return {
            "params": aux.params / max(backbone.params, 1),
            "flops": aux.flops / max(backbone.flops, 1),
            "saved_bytes": aux.saved_bytes / max(backbone.saved_bytes, 1),
        }


def aux_budget(
    config: AuxConfig,
    geometries: Sequence[Geometry],
    stats: Sequence,
    batch: int,
    momentum: bool = False,
) -> AuxBudget:
    """Measure every segment's aux modules, with the sources its bridge really reads.

    Example::

        budget = aux_budget(learner.aux_config, learner.geometries, learner.partition.stats, 32)
        budget.fractions()   # {'params': 0.04, 'flops': 0.02, 'saved_bytes': 0.05}

    ``stats`` are the partition's ``SegmentStats``; their FLOPs and bytes must be
    measured at batch size ``batch``. ``momentum``: the heads are momentum heads
    (``contsup.momentum_heads``): head j is a shadow of segment j+1 (its FLOPs and
    saved bytes, no parameters) and then the design's head at boundary j+1.
    """
    heads, bridges = [], [AuxCost()]
    for k, target in enumerate(geometries):
        sources = gather_sources(k, config.mode, geometries, config.image)
        head, bridge = aux_costs(config, target, sources, batch)
        heads.append(head)
        bridges.append(bridge)
    heads.append(AuxCost())
    backbone = [AuxCost(s.params, s.param_bytes, s.flops, s.activation_bytes) for s in stats]
    if momentum:
        shadows = [AuxCost(flops=s.flops, saved_bytes=s.saved_bytes) for s in backbone[1:]]
        heads = [h + s for h, s in zip(heads[1:], shadows, strict=True)] + [AuxCost()]
    return AuxBudget(backbone, heads, bridges)
