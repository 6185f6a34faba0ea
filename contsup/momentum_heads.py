"""Momentum heads: each local head looks through a moving average of the next segment.

A plain local head reads segment j's output directly, so segment j learns features
that a small head can classify now, whether or not segment j+1 can use them. A
momentum head first runs a shadow of segment j+1, whose weights follow the live
segment's by an exponential moving average (as the momentum auxiliary network
does; AugLocal borrows later layers too), then a head of the aux design at segment
j+1's output. Segment j's loss then sees through the layers that will read it.

The shadow is never trained: its weights are buffers, outside every segment and
optimizer, and its gradient only passes through to segment j. It follows the live
segment once per training step, after unit j's backward and before segment j+1
runs: it averages in the weights segment j+1 trains with in this step, for the next
step. That lag (the shadow a step behind the weights it last averaged in) is what a
pipeline stage can have without waiting for the stage after it, which sends
segment j+1's weights as its step starts (``contsup.distributed.shadow_feed``): a
pipeline trains what one process trains, bitwise. The decay warms up, as
min(decay, (1 + n) / (10 + n)) after n steps: a short run's shadow does not stay
at its initial weights. The last local head borrows the final segment, which ends
in the classifier: its logits are the head's scores. Cost: each unit runs the next
segment once more, forward and backward, and saves its activations (ResNet-32 at
32 px, K=16, R1E: the step's peak 0.47x end-to-end's against 0.40x without;
benchmarks/momentum_cost.py). ``auto``, the default, turns them on where that is
cheap (``resolve_momentum``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from contsup.errors import ConfigError

__all__ = [
    "AUTO",
    "AUTO_DECAY",
    "AUTO_SAVED_LIMIT",
    "OFF",
    "MomentumHead",
    "check_momentum",
    "momentum_of",
    "momentum_option",
    "resolve_momentum",
    "shadows",
    "use_momentum_heads",
]

AUTO = "auto"  # the default: momentum heads where they are cheap (``resolve_momentum``)
OFF = "off"  # plain heads, as None is in Python
AUTO_DECAY = 0.99  # the measured decay (docs/context.md)
# Networks that save at most this many bytes per image for backward (every CIFAR
# ResNet, resnet18 at 64 px; no ImageNet model at 224 px) take them under ``auto``:
# there they cost time, but memory is not what limits a run.
AUTO_SAVED_LIMIT = 16 * 2**20


def check_momentum(momentum: float | str | None) -> None:
    """Raise ``ConfigError`` (one sentence) unless ``momentum`` is None or ``"off"``,
    ``"auto"``, or a decay with ``0 <= momentum < 1``.

    Example::

        check_momentum(0.99)   # fine
        check_momentum(1.0)    # ConfigError: the shadow would never follow
    """
    if momentum in (None, OFF, AUTO):
        return
    if isinstance(momentum, str) or not 0.0 <= momentum < 1.0:
        raise ConfigError(
            f"momentum heads take auto, off or a moving-average decay in [0, 1), got "
            f"{momentum!r}; 0.99 is the measured one (docs/context.md)"
        )


def momentum_option(text: str | None) -> float | str | None:
    """``--momentum-heads`` as typed (None: not given): ``auto``, ``off`` or a decay.

    Example::

        momentum_option("off"), momentum_option("0.9")   # ("off", 0.9)
    """
    if text in (None, AUTO, OFF):
        return text
    try:
        value = float(text)
    except ValueError:
        value = text  # refused below, in one sentence
    check_momentum(value)
    return value


def resolve_momentum(
    momentum: float | str | None, design: str, local_loss: str, stats: Sequence, batch: int
) -> float | None:
    """The decay a learner's momentum heads take, None for plain heads: ``auto`` is
    ``AUTO_DECAY`` for the ``sized`` design's ce heads on a network that saves at most
    ``AUTO_SAVED_LIMIT`` bytes per image for backward, and None elsewhere. ``stats``:
    the partition's ``SegmentStats``, measured at batch size ``batch``.

    Example::

        resolve_momentum("auto", "sized", "ce", part.stats, 2)  # resnet32, 32 px: 0.99
                                                                # resnet50, 224 px: None
    """
    check_momentum(momentum)
    if momentum != AUTO:
        return None if momentum == OFF else momentum
    saved_per_image = sum(s.activation_bytes for s in stats) / batch
    cheap = design == "sized" and local_loss == "ce" and saved_per_image <= AUTO_SAVED_LIMIT
    return AUTO_DECAY if cheap else None


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters are buffers of the same names."""
    shadow = copy.deepcopy(module)
    for sub in shadow.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().clone())
    return shadow


class MomentumHead(nn.Module):
    """A shadow of the next segment, then ``head``; see the module docstring.

    Example::

        head = MomentumHead(learner.segments[j + 1], head_at_next_boundary, momentum=0.99)
        scores = head(segment_j_output)     # local_units makes it follow after the unit
    """

    def __init__(self, next_segment: nn.Module, head: nn.Module, momentum: float):
        super().__init__()
        check_momentum(momentum)
        self._live = [next_segment]  # in a list: the network owns it, not this head
        self.shadow = _frozen_copy(next_segment)
        self.head = head
        self.momentum = momentum
        # How many times it has followed: the decay warms up from there (``follow``).
        self.register_buffer("follows", torch.zeros((), dtype=torch.long))
        # The shadow's buffers that are the live segment's weights, in the shadow's
        # order. The rest, BatchNorm's statistics, are the shadow's own: its forward
        # updates them from what it reads, the previous segment's output. The live
        # segment's would not fit it once a bridge adds context to what that one reads
        # (a head's test accuracy fell to 13-50% with them).
        weights = dict(next_segment.named_parameters())
        self._weights = [name for name, _ in self.shadow.named_buffers() if name in weights]

    def weights(self) -> list[torch.Tensor]:
        """The shadow's weights (buffers), in the order ``live_values`` gives the live ones."""
        buffers = dict(self.shadow.named_buffers())
        return [buffers[name] for name in self._weights]

    def live_values(self) -> list[torch.Tensor]:
        """The live segment's weights, in the order of ``weights``: what ``follow``
        reads (a pipeline sends them from the next stage)."""
        live = dict(self._live[0].named_parameters())
        return [live[name] for name in self._weights]

    @torch.no_grad()
    def follow(self, values: list[torch.Tensor] | None = None) -> None:
        """shadow <- d * shadow + (1 - d) * live, for every weight, where the decay d
        warms up as min(momentum, (1 + n) / (10 + n)) after n follows (so a short run's
        shadow is not its initial weights). ``values``: the live segment's weights as
        ``live_values`` orders them (default: read them).

        Example::

            head.follow()      # LocalLearner.local_units calls it after the unit's backward
        """
        values = self.live_values() if values is None else values
        # On the device, without a host sync: 1 - d, as a tensor.
        n = self.follows.float()
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=self.momentum)
        for shadow, value in zip(self.weights(), values, strict=True):
            shadow.lerp_(value, weight.to(shadow.dtype))
        self.follows += 1

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.shadow(h))


def momentum_of(learner) -> float | None:
    """The decay of ``learner``'s momentum heads; None for plain heads.

    Example::

        momentum_of(contsup.wrap(resnet32, 16))   # 0.99: ``auto`` on a CIFAR ResNet
    """
    heads = [h for h in learner.heads if isinstance(h, MomentumHead)]
    return heads[0].momentum if heads else None


def shadows(learner) -> list[torch.Tensor]:
    """The weights and statistics of ``learner``'s shadows: memory no optimizer holds.

    Example::

        sum(t.numel() for t in shadows(contsup.wrap(model, 16, momentum_heads=0.99)))
    """
    return [t for h in learner.heads if isinstance(h, MomentumHead) for t in h.shadow.buffers()]


def use_momentum_heads(learner, momentum: float) -> None:
    """Replace each local head of ``learner`` by a ``MomentumHead`` over the next segment.

    Example::

        learner = contsup.wrap(model, k=16, context="R1E", momentum_heads=0.99)  # calls this

    The heads are made after the learner's own (whose random draws they do not move),
    at the next boundary's geometry, by the learner's aux design.
    """
    from contsup.auxiliary import get_design

    if learner.local_loss != "ce":
        raise ConfigError("momentum heads need the ce local loss: the last one scores logits")
    check_momentum(momentum)
    aux = learner.aux_config
    design = get_design(aux.design)
    device = next(learner.parameters()).device
    # As wrap makes heads: on the meta device for a meta learner, else on the CPU (the
    # same random draws on every device) and then moved.
    making = torch.device("meta") if device.type == "meta" else nullcontext()
    for j in range(learner.k - 1):
        if j + 1 < learner.k - 1:
            with making:
                head = design.head(aux.head, learner.geometries[j + 1], aux.out_features, aux.width)
        else:
            head = nn.Identity()
        learner.heads[j] = MomentumHead(learner.segments[j + 1], head.to(device), momentum)
