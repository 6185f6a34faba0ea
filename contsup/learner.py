"""``wrap`` a model into a ``LocalLearner``: segments, local heads and context bridges.

Training, per batch (``local_backward``): for each segment in turn, run it on its
input, score its output with its local head (the last segment with the model's
own classifier), back-propagate, then build the next segment's input as

    h'_k = h_k.detach() + sum_j M_j(c_j.detach())

Only one segment's graph is alive at a time and no gradient crosses a boundary;
the bridges M_j learn from the next segment's loss only. At inference
(``learner(x)``) the same chain runs without heads and without detaching.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

import partitioner
from contsup.auxiliary import DEFAULT_DESIGN, AuxConfig, aux_config
from contsup.budget import balance_hook, balanced_partition
from contsup.context import ContextMode, gather_sources, recent_sources
from contsup.errors import ConfigError, ContsupError
from contsup.geometry import Geometry, geometry_of
from contsup.losses import local_loss_fn
from contsup.mixing import hard_labels
from contsup.momentum_heads import AUTO, MomentumHead, resolve_momentum, use_momentum_heads
from contsup.network import Carry, ContextNetwork, Unit
from contsup.oom import StepOutOfMemory

__all__ = [
    "Carry",
    "InputShapeError",
    "LocalLearner",
    "LocalStep",
    "ContextNetwork",
    "Unit",
    "aux_config",
    "balance_hook",
    "gather_sources",
    "recent_sources",
    "wrap",
]


class InputShapeError(ContsupError):
    """A batch of another shape than the one a learner was built for."""


@dataclass
class LocalStep:
    """What ``local_backward`` returns: final logits (detached) and K losses (floats)."""

    logits: torch.Tensor
    losses: list[float]


class LocalLearner(nn.Module):
    """A model cut into K gradient-isolated segments, with heads and context bridges.

    Example::

        learner = contsup.wrap(timm.create_model("resnet32", num_classes=10), k=4, context="R1E")
        step = learner.local_backward(x, y)   # then optimizer.step()
        logits = learner.eval()(x)

    Attributes:
        segments, heads, bridges: ``nn.ModuleList`` of K, K-1 and K-1 modules.
        decoders: K-1 reconstruction decoders, or an empty list.
        partition: the ``partitioner.Partition`` the segments come from.
    """

    def __init__(
        self,
        partition: partitioner.Partition,
        heads: Sequence[nn.Module],
        bridges: Sequence[nn.Module],
        decoders: Sequence[nn.Module],
        *,
        context: ContextMode,
        aux: AuxConfig,
        geometries: Sequence[Geometry],
        local_loss: str,
        loss_weights: Sequence[tuple[float, float]],
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__()
        self._partition = [partition]  # in a list, so its segments are not registered twice
        self.network = ContextNetwork(partition.segments, nn.ModuleList(bridges), context)
        self.heads = nn.ModuleList(heads)
        self.decoders = nn.ModuleList(decoders)
        self.context = context
        self.aux_config = aux
        self.geometries = list(geometries)
        self.local_loss = local_loss
        self.loss_weights = list(loss_weights)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self._score = local_loss_fn(local_loss)
        self._no_weight_decay: frozenset[str] = frozenset()
        self._unit_steps: list | None = None  # compile_units: one compiled step per unit

    @property
    def partition(self) -> partitioner.Partition:
        return self._partition[0]

    @property
    def segments(self) -> nn.ModuleList:
        return self.network.segments

    @property
    def bridges(self) -> nn.ModuleList:
        return self.network.bridges

    @property
    def aux(self) -> str:
        """The aux design's name: ``scaled``, ``sized``, ``paper`` or a registered one."""
        return self.aux_config.design

    @property
    def k(self) -> int:
        return len(self.segments)

    def no_weight_decay(self) -> frozenset[str]:
        """The names (as in ``named_parameters()``) of the parameters the model's own
        ``no_weight_decay()`` lists, which timm's optimizers do not decay (a ViT's
        ``pos_embed`` and ``cls_token``); timm's convention, under the learner's names.

        Example::

            learner.no_weight_decay()   # {'network.segments.0.pos_embed', ...}
        """
        return self._no_weight_decay

    def unit(self, j: int) -> Unit:
        """Unit ``j``: the bridge into segment j, segment j, and its head and decoder
        (none for the last segment, scored by the model's own classifier).

        Example::

            unit = learner.unit(2)
            unit.bridge, unit.segment, unit.head   # learner.bridges[1], .segments[2], .heads[2]
            owned = unit.modules()                 # what a pipeline stage running it holds
        """
        if j == self.k - 1:
            return self.network.unit(j)
        decoder = self.decoders[j] if self.decoders else None
        return replace(self.network.unit(j), head=self.heads[j], decoder=decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.network(x)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``InputShapeError`` unless ``x`` is a batch of the input shape the
        learner was built for: bridges and heads are sized for that shape's boundaries."""
        built = tuple(self.partition.input_shape[1:])
        if tuple(x.shape[1:]) != built:
            raise InputShapeError(
                f"this learner was built for inputs of shape {built}, got {tuple(x.shape[1:])}; "
                "pass example_input=torch.zeros(2, C, H, W) of your data's shape to contsup.wrap"
            )

    def export(self) -> ContextNetwork:
        """A standalone copy of the inference model (segments and bridges, no heads)."""
        return copy.deepcopy(self.network)

    def local_loss_of(
        self,
        k: int,
        out: torch.Tensor,
        y: torch.Tensor,
        raw: torch.Tensor | None,
        head_out: torch.Tensor | None = None,
    ):
        """Boundary ``k``'s local loss: head score, plus weighted reconstruction if enabled.
        ``head_out``: the head's output on ``out``, when the caller has it already."""
        loss = self._score(self.heads[k](out) if head_out is None else head_out, y)
        if not self.decoders:
            return loss
        reconstruction_weight, local_weight = self.loss_weights[k]
        reconstruction = F.binary_cross_entropy(self.decoders[k](out).float(), raw.float())
        return reconstruction_weight * reconstruction + local_weight * loss

    def local_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        raw: torch.Tensor | None = None,
        autocast: torch.dtype | None = None,
    ) -> LocalStep:
        """Forward and backward, one segment at a time; the caller steps the optimizer.

        Example::

            step = learner.local_backward(x, y)
            optimizer.step(); optimizer.zero_grad()
            step.losses      # K floats: K-1 local losses, then the final loss

        Args:
            y: class indices, or soft targets (batch, classes) as mixup and label
                smoothing make them: every local head and the classifier score them.
            raw: the un-normalised image in [0, 1] for the reconstruction decoder
                (default: ``x`` un-normalised with ``learner.mean``/``learner.std``).
            autocast: run forward passes under ``torch.autocast`` with this dtype.
        """
        self.check_input(x)
        carry = Carry(self.context)
        losses, _ = self.local_units(x, y, carry, 0, self.k, raw=raw, autocast=autocast)
        return LocalStep(carry.out, torch.stack(losses).tolist())

    def raw_of(self, x: torch.Tensor) -> torch.Tensor:
        """The image in [0, 1] that normalised input ``x`` came from: the decoders' target
        when none is given.

        Example::

            raw = learner.raw_of(x)        # (x * learner.std + learner.mean).clamp(0, 1)
        """
        return (x * self.std + self.mean).clamp(0, 1)

    def local_units(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        carry: Carry,
        start: int,
        stop: int,
        *,
        raw: torch.Tensor | None = None,
        autocast: torch.dtype | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``local_backward`` for units ``start..stop-1`` only, from ``carry``: their
        detached losses, and how many labels each unit's head (the last unit: the
        classifier) got right (0 for contrastive heads, which give features). A
        pipeline stage runs its own units and sends the carry on.

        Unit j is the bridge into segment j, segment j, and segment j's local loss;
        its backward reaches the bridge too, never the segment before.
        """
        if self.decoders and raw is None:
            raw = self.raw_of(x)
        # x is None on a pipeline stage none of whose units reads the image.
        cast = (
            torch.autocast(y.device.type, dtype=autocast) if autocast is not None else nullcontext()
        )
        losses, correct = [], []
        classify = self.local_loss == "ce"
        for j in range(start, stop):
            try:
                loss, scores, out = self._run_unit(j, x, y, carry, raw, cast)
            except torch.OutOfMemoryError as error:
                # One sentence at the command line, naming the segment, not a traceback.
                raise StepOutOfMemory(j) from error
            last = j == self.k - 1
            losses.append(loss.detach())
            # Soft targets (mixup, label smoothing) count their most probable class.
            hits = (
                (scores.detach().argmax(1) == hard_labels(y)).sum()
                if last or classify
                else y.new_zeros((), dtype=torch.long)
            )
            correct.append(hits)
            if j + 1 < stop and isinstance(self.heads[j], MomentumHead):
                # Now: after the unit's backward (its graph saved the shadow's weights),
                # before the next segment steps; a pipeline stage's last head follows
                # with the weights the stage after it sends (contsup.distributed).
                self.heads[j].follow()
            carry.out = out.detach()
            del out, scores  # the carry holds the output alone: the next bridge lets go of it
        return losses, correct

    def compile_units(self, **options) -> None:
        """``torch.compile`` each unit's training step (bridge, segment, head and local
        loss) as one function, for ``local_backward`` and ``local_units``.

        Example::

            learner.compile_units()                  # or compile_units(mode="max-autotune")
            step = learner.local_backward(x, y)      # compiles unit by unit on the first call

        ``options`` go to ``torch.compile``. Inference (``learner(x)``) stays eager.
        """
        from contsup.compiling import compile_each

        # Every segment, momentum heads' shadows too, has its forward made before tracing.
        for module in self.modules():
            if isinstance(module, partitioner.Segment):
                module.prepare()
        self._unit_steps = compile_each([self._step_of(j) for j in range(self.k)], **options)

    @staticmethod
    def _step_of(j: int):
        """Unit ``j``'s forward as a plain function of the learner, for ``torch.compile``
        (the learner is an argument, not captured: a deep copy runs its own modules)."""

        def step(learner, x, y, previous, sources, raw):
            return learner._unit_forward(j, x, y, previous, sources, raw)

        return step

    def _unit_forward(self, j: int, x, y, previous, sources, raw):
        """Unit ``j``'s forward from the previous segment's output and the sources its
        bridge reads: ``(loss, scores, segment output, segment input)``. The compiled
        unit step (one pure function); the eager ``_run_unit`` runs the same two parts
        itself, so that it can let go of the bridge's inputs between them."""
        h = x if j == 0 else self.bridges[j - 1](previous, sources, x)
        return (*self._segment_forward(j, y, h, raw), h)

    def _segment_forward(self, j: int, y, h, raw):
        """Segment ``j`` on its input ``h``, then its loss: ``(loss, scores, output)``."""
        out = self.segments[j](h)
        if j == self.k - 1:
            return F.cross_entropy(out.float(), y), out, out
        scores = self.heads[j](out)
        return self.local_loss_of(j, out, y, raw, scores), scores, out

    def _run_unit(self, j: int, x, y, carry: Carry, raw, cast):
        """Unit ``j``'s forward and local backward: its loss, scores and output."""
        # Everything the unit reads is detached: its bridge learns from its loss only.
        sources = carry.sources(j - 1, x) if j else []
        with cast:
            if self._unit_steps:
                loss, scores, out, h = self._unit_steps[j](self, x, y, carry.out, sources, raw)
                if j:
                    carry.keep(h.detach())
            else:
                h = x
                if j:
                    # What only the bridge reads (the previous output, older boundary
                    # inputs) is let go of before the segment runs, not held through
                    # its forward and backward: a boundary tensor or two less at the peak.
                    previous, carry.out = carry.out, None
                    h = self.bridges[j - 1](previous, sources, x)
                    del previous, sources
                    carry.keep(h.detach())
                loss, scores, out = self._segment_forward(j, y, h, raw)
        if loss.requires_grad:  # a segment with nothing to train (no weights, R0) skips
            loss.backward()
        return loss, scores, out


def _default_input(model: nn.Module) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "input_size" not in cfg:
        raise ConfigError("pass example_input: the model has no timm pretrained_cfg input_size")
    channels, *size = cfg["input_size"]
    # Models built with another img_size (a ViT at 32x32) keep the default cfg's size;
    # their patch embedding knows the real one.
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or size
    device = next(model.parameters()).device
    # Batch 2: batch norm refuses to train on one value per channel.
    return torch.zeros(2, channels, *size, device=device)


def _per_channel(values, channels: int) -> tuple[float, ...]:
    """A timm cfg's mean or std, unless it is for another channel count (in_chans=1)."""
    return tuple(values) if values is not None and len(values) == channels else (0.5,) * channels


def _loss_weights(decoder: Sequence[float] | None, boundaries: int) -> list[tuple[float, float]]:
    if decoder is None:
        return [(0.0, 1.0)] * boundaries
    if len(decoder) != 4:
        raise ConfigError(
            f"decoder takes four loss scales [ixx_1, ixy_1, ixx_2, ixy_2], got {list(decoder)}"
        )
    xx1, xy1, xx2, xy2 = (float(v) for v in decoder)
    weights = []
    for i in range(boundaries):
        t = i / (boundaries - 1) if boundaries > 1 else 0.0
        weights.append((xx1 + t * (xx2 - xx1), xy1 + t * (xy2 - xy1)))
    return weights


def _segments(
    k: int | None, cuts: Sequence[str] | partitioner.Partition | None, x: torch.Tensor
) -> tuple[int, list | None]:
    """``wrap``'s number of segments and node-name cuts (None: balance), checked
    against each other and, for a saved plan, against the input's shape."""
    if isinstance(cuts, partitioner.Partition):
        if tuple(cuts.input_shape[1:]) != tuple(x.shape[1:]):
            raise ConfigError(
                f"the plan was made for inputs of shape {tuple(cuts.input_shape[1:])}, "
                f"not {tuple(x.shape[1:])}"
            )
        cuts = [tuple(t.node for t in b.tensors) for b in cuts.boundaries]
    if cuts is not None:
        cuts = list(cuts)
        if k is not None and k != len(cuts) + 1:
            raise ConfigError(f"k={k} segments need {k - 1} cuts, got {len(cuts)}")
        k = len(cuts) + 1
    if k is None:
        raise ConfigError("pass k, the number of segments, or cuts")
    return k, cuts


def wrap(
    model: nn.Module,
    k: int | None = None,
    *,
    context: str = "E",
    aux: str = DEFAULT_DESIGN,
    local_loss: str = "ce",
    head: str = "1c2f",
    decoder: Sequence[float] | None = None,
    momentum_heads: float | str | None = AUTO,
    cuts: Sequence[str] | partitioner.Partition | None = None,
    objective: str = "flops",
    example_input: torch.Tensor | None = None,
    num_classes: int | None = None,
    analysis: partitioner.Analysis | None = None,
    meta_modules: dict | None = None,
) -> LocalLearner:
    """Cut ``model`` into ``k`` segments and add local heads and context bridges.

    Example::

        learner = contsup.wrap(timm.create_model("convnext_atto", num_classes=10), k=4,
                               context="R1E")
        step = learner.local_backward(x, y)   # then optimizer.step()

    Args:
        k: number of segments; 1 is ordinary end-to-end training. Optional with ``cuts``.
        context: ``R0``, ``E``, ``Rn`` or ``RnE`` (see ``contsup.context``).
        aux: the design of heads, bridges and decoders: ``sized`` (the default: the
            paper's modules where they are cheap, thin ones elsewhere), ``scaled`` (thin
            at any input size) or ``paper`` (the reference's; see ``contsup.auxiliary``).
        local_loss: ``ce`` (cross-entropy) or ``contrast`` (supervised contrastive).
        head: local head config, ``<a>c<b>f`` (default ``1c2f``, the paper's).
        decoder: None, or the four loss scales ``[ixx_1, ixy_1, ixx_2, ixy_2]`` that
            turn on the reconstruction decoder; the (reconstruction, local) weights go
            linearly from (ixx_1, ixy_1) at the first boundary to (ixx_2, ixy_2) at the last.
        momentum_heads: a moving-average decay (0.99): each local head then looks
            through a shadow of the next segment that follows its weights
            (``contsup.momentum_heads``; each unit runs the next segment once more);
            None for plain heads; ``auto`` (the default): 0.99 with ``aux="sized"`` on
            networks that save at most 16 MiB per image for backward (CIFAR ResNets,
            resnet18 at 64 px), where they measurably help, else None.
        cuts: cut after these graph nodes (names as ``contsup split`` prints them), or
            at a ``Partition``'s cuts (e.g. ``Partition.from_json`` of a saved plan),
            instead of balancing.
        objective: what the partitioner balances (``flops``, ``memory``, ...); heads
            and bridges are counted with the segments they run in.
        example_input: defaults to the model's timm input size, batch 2. Pass one of
            your data's shape when it differs (``torch.zeros(2, 3, 64, 64)``): heads and
            bridges are sized for it, and other shapes are refused.
        num_classes: defaults to ``model.num_classes``.
        analysis: ``partitioner.analyze(model, example_input)``, reused instead of
            tracing the model again (a planner tries many K on one model).
        meta_modules: for a model on the meta device only: a dict in which heads and
            bridges are kept by what decides them, and shared by every learner wrapped
            with it (a planner's learners are priced, never trained, and building
            modules is most of the cost of wrapping one).

    The learner shares parameters with ``model``.
    """
    x = _default_input(model) if example_input is None else example_input
    config = aux_config(
        model,
        x,
        context=context,
        aux=aux,
        head=head,
        local_loss=local_loss,
        num_classes=num_classes,
        decoder=decoder is not None,
    )
    mode, image = config.mode, config.image
    k, cuts = _segments(k, cuts, x)
    boundaries = k - 1 if isinstance(k, int) else 0
    weights = _loss_weights(decoder, max(boundaries, 0))
    if analysis is None:
        partitioner.check_objective(objective)
        timed = cuts is None and objective == "time"
        analysis = partitioner.analyze(model, x, measure_time=timed)
    if cuts is None:
        part = balanced_partition(analysis, k, objective, config)
    else:
        part = analysis.split_at(cuts, objective)
    for b in part.boundaries:
        if len(b.tensors) != 1:
            raise ConfigError("context supply needs single-tensor boundaries")
    geometries = [geometry_of(b.tensors[0], model) for b in part.boundaries]
    heads, decoders, bridges = [], [], []
    device = x.device if x.device.type != "meta" else next(model.parameters()).device
    # A meta model (a planner's) gets its heads and bridges made on the meta device:
    # initialising weights on the CPU only to drop them costs more than the rest of
    # wrap. Others are made on the CPU and moved, so seeded runs keep their weights.
    making = torch.device("meta") if device.type == "meta" else nullcontext()
    if meta_modules is not None and device.type != "meta":
        raise ConfigError("meta_modules shares modules between meta learners only")
    shared = {} if meta_modules is None else meta_modules
    taken: dict = {}  # how many of ``shared``'s modules of each kind this learner holds
    for i, target in enumerate(geometries):
        sources = tuple(gather_sources(i, mode, geometries, image))
        # Two boundaries alike take two modules: one learner never holds a module twice.
        key = (config, target, sources)
        made = shared.setdefault(key, [])
        taken[key] = taken.get(key, 0) + 1
        if len(made) < taken[key]:
            with making:
                made.append(config.modules_at(target, sources))
        head_module, decoder_module, bridge = made[taken[key] - 1]
        heads.append(head_module)
        bridges.append(bridge)
        if decoder_module is not None:
            decoders.append(decoder_module)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels = x.shape[1]
    learner = LocalLearner(
        part,
        heads,
        bridges,
        decoders,
        context=mode,
        aux=config,
        geometries=geometries,
        local_loss=local_loss,
        loss_weights=weights,
        mean=_per_channel(cfg.get("mean"), channels),
        std=_per_channel(cfg.get("std"), channels),
    )
    learner._no_weight_decay = _no_weight_decay(model, learner)
    learner = learner.to(device)
    decay = resolve_momentum(momentum_heads, config.design, local_loss, part.stats, x.shape[0])
    if decay is not None:
        use_momentum_heads(learner, decay)
    return learner


def _no_weight_decay(model: nn.Module, learner: LocalLearner) -> frozenset[str]:
    """The learner's names of the parameters ``model.no_weight_decay()`` lists (shared)."""
    listed = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    exempt = {id(p) for name, p in model.named_parameters() if name in listed}
    return frozenset(name for name, p in learner.named_parameters() if id(p) in exempt)
