"""Mixup, cutmix and label smoothing: a batch's inputs mixed and its labels made soft.

timm's ``Mixup`` does the work. Its draws come from NumPy's global generator; here
each step draws from its own, seeded by the run's seed and the step's number, and
NumPy's global state is put back: a resumed run (mid-epoch too) mixes every step as
the uninterrupted run did, and nothing else's random numbers move. The rank that
loads a batch's images mixes them (a pipeline's first stage, which sends the soft
targets down the pipe with the labels): a pipeline mixes as one process does, and
data-parallel replicas each mix their own slice, as each rank does in timm's
training.

The targets are class probabilities (batch, classes), which ``F.cross_entropy`` scores
as timm's ``SoftTargetCrossEntropy`` does: the local heads and the last segment get the
same soft targets.
"""

from __future__ import annotations

import numpy as np
import torch

from contsup.errors import ConfigError

__all__ = ["TargetMixer", "check_mixing", "mixer_for", "hard_labels"]


def check_mixing(mixup: float, cutmix: float, label_smoothing: float, local_loss: str) -> None:
    """Raise ``ConfigError`` (one sentence) on mixing settings a run cannot use.

    Example::

        check_mixing(0.8, 1.0, 0.1, "ce")         # fine: timm's ImageNet recipe
        check_mixing(0.8, 0.0, 0.0, "contrast")   # ConfigError: SupCon needs hard labels
    """
    if mixup < 0 or cutmix < 0:
        raise ConfigError(f"mixup and cutmix are Beta alphas, 0 or more; got {mixup}, {cutmix}")
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if (mixup or cutmix or label_smoothing) and local_loss != "ce":
        raise ConfigError(
            f"the {local_loss!r} local loss needs hard labels; mixup, cutmix and label "
            "smoothing work with local_loss 'ce'"
        )


class TargetMixer:
    """Mix each training batch and give it soft targets, the same at every replay of a step.

    Example::

        mixer = TargetMixer(num_classes=10, seed=0, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
        x, soft = mixer(x, y, step=7)   # soft: (batch, 10) probabilities; x mixed in place

    ``step`` is the run's global step (0-based); the same seed and step mix the same way.
    """

    def __init__(
        self, num_classes: int, seed: int, mixup: float, cutmix: float, label_smoothing: float
    ):
        from timm.data import Mixup

        self.num_classes, self.seed, self.smoothing = num_classes, seed, label_smoothing
        self.mixup = None
        if mixup or cutmix:
            self.mixup = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.mixup import mixup_target

        if self.mixup is None or len(y) < 2:
            return x, mixup_target(y, self.num_classes, 1.0, self.smoothing)
        outside = np.random.get_state()
        np.random.seed([self.seed % 2**32, step])
        try:
            # timm pairs image i with image n-1-i: an odd last image keeps its own.
            even = len(y) - len(y) % 2
            _, soft = self.mixup(x[:even], y[:even])
            if even < len(y):
                alone = mixup_target(y[even:], self.num_classes, 1.0, self.smoothing)
                soft = torch.cat([soft, alone])
        finally:
            np.random.set_state(outside)
        return x, soft


def mixer_for(
    num_classes: int, seed: int, mixup: float, cutmix: float, label_smoothing: float
) -> TargetMixer | None:
    """A ``TargetMixer``, or None when mixup, cutmix and label smoothing are all off.

    Example::

        mixer = mixer_for(1000, config.seed, config.mixup, config.cutmix, config.label_smoothing)
    """
    if not (mixup or cutmix or label_smoothing):
        return None
    return TargetMixer(num_classes, seed, mixup, cutmix, label_smoothing)


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices from labels or soft targets (the most probable class), for accuracy.

    Example::

        >>> hard_labels(torch.tensor([[0.1, 0.9], [0.7, 0.3]])).tolist()
        [1, 0]
    """
    return y.argmax(1) if y.is_floating_point() else y
