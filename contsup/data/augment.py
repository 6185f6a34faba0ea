"""timm's training transform for the datasets streamed from disk (``imagefolder:PATH``, stl10).

``augment`` chooses it: ``timm`` is timm's ``create_transform`` training pipeline
(RandomResizedCrop, flip, colour jitter); a timm auto-augment policy adds that policy
(``rand-m9-mstd0.5-inc1`` RandAugment, ``augmix-m5``, ``original`` AutoAugment, or
``trivialaugment``: one RandAugment op per image, always, at a magnitude drawn
uniformly). ``random_erasing`` is timm's ``re_prob``. The datasets held on the
device (cifar*, svhn, digits, mnist) keep their crop-and-flip: timm's transforms
work on PIL images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contsup.data.batches import Batches
from contsup.data.errors import DataError
from contsup.data.info import DatasetInfo
from contsup.errors import ConfigError

__all__ = ["TRIVIAL_AUGMENT", "check_augment", "timm_train_transform", "use_timm_augment"]

# timm's RandAugment as TrivialAugment: one op, always applied, magnitude uniform in [0, 10].
TRIVIAL_AUGMENT = "rand-m10-n1-mstd101-p1"


def check_augment(augment: str | None, random_erasing: float) -> None:
    """Raise ``ConfigError`` (one sentence) unless timm can build this augmentation.

    Example::

        check_augment("rand-m9-mstd0.5-inc1", 0.25)   # fine
        check_augment("randaugment", 0.0)             # ConfigError
    """
    if not 0 <= random_erasing <= 1:
        raise ConfigError(f"random_erasing is a probability in [0, 1], got {random_erasing}")
    if augment is not None:
        timm_train_transform(DatasetInfo("check", 10, (3, 32, 32), (0.5,) * 3, (0.5,) * 3, 0, True),
                             augment, random_erasing)  # fmt: skip


def timm_train_transform(info: DatasetInfo, augment: str | None, random_erasing: float):
    """timm's training transform for images like ``info``'s, ending in a [0, 1] tensor.

    Example::

        transform = timm_train_transform(info, "rand-m9-mstd0.5-inc1", 0.25)
        transform(pil_image).shape   # (3, 224, 224), values in [0, 1]

    timm normalises before random erasing (its noise is drawn in normalised units);
    the batches normalise again, so the transform un-normalises at its end.
    """
    from timm.data import create_transform

    policy = None if augment in (None, "timm") else augment
    policy = TRIVIAL_AUGMENT if policy == "trivialaugment" else policy
    try:
        normalised = create_transform(
            info.image_size,
            is_training=True,
            hflip=0.5 if info.flip else 0.0,
            auto_augment=policy,
            re_prob=random_erasing,
            mean=info.mean,
            std=info.std,
        )
    except (AssertionError, KeyError, ValueError, IndexError) as error:
        why = str(error) or "an unknown policy"
        raise ConfigError(
            f"timm cannot build the augmentation {augment!r} ({why}); use timm, trivialaugment "
            "or a timm auto-augment policy such as rand-m9-mstd0.5-inc1"
        ) from None
    from torchvision.transforms import Compose

    return Compose([normalised, _Unnormalise(info.mean, info.std)])


@dataclass
class _Unnormalise:
    """Back from timm's normalised tensor to the [0, 1] image the batches expect."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x * std + mean).clamp_(0, 1)


def use_timm_augment(data: Batches, augment: str | None, random_erasing: float) -> None:
    """Make ``data``'s training set go through timm's transform (``timm_train_transform``).

    Example::

        data = load_dataset("imagefolder:/data/imagenet", batch_size=256)
        use_timm_augment(data, "rand-m9-mstd0.5-inc1", 0.25)

    Raises ``DataError`` for a dataset held on the device, whose augmentation is its own.
    """
    if augment is None and not random_erasing:
        return
    train_set = getattr(data, "train_set", None)
    if not hasattr(train_set, "transform"):
        raise DataError(
            f"{data.info.name} is augmented on the device; timm's augmentation and random "
            "erasing work with the datasets streamed from disk (imagefolder:PATH, stl10)"
        )
    train_set.transform = timm_train_transform(data.info, augment, random_erasing)
