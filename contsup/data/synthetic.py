"""Random uint8 images and labels from a fixed seed: ``synthetic`` or ``synthetic:CxHxW``."""

from __future__ import annotations

from dataclasses import replace

import torch

from contsup.data.batches import DeviceBatches
from contsup.data.errors import DataError
from contsup.data.info import HALF, DatasetInfo
from contsup.data.registry import LoadOptions, register_dataset

__all__: list[str] = []

SYNTHETIC = DatasetInfo("synthetic", 10, (3, 32, 32), HALF, HALF, 4, True)


def _shape(name: str, argument: str) -> tuple[DatasetInfo, str]:
    """``synthetic:3x64x64`` -> its info, normalised at 0.5 per channel."""
    try:
        shape = tuple(int(v) for v in argument.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise DataError(f"synthetic takes a shape like synthetic:3x224x224, got {name!r}")
    info = replace(
        SYNTHETIC,
        name=name,
        image_size=shape,
        mean=(0.5,) * shape[0],
        std=(0.5,) * shape[0],
        pad=max(1, shape[1] // 8),
    )
    return info, "synthetic"


def _load(info: DatasetInfo, source: str, options: LoadOptions) -> DeviceBatches:
    g = torch.Generator().manual_seed(0)
    shape, classes = info.image_size, info.num_classes
    make = lambda n: torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)  # noqa: E731
    return DeviceBatches(
        info,
        options.batch_size,
        options.device,
        make(2048),
        torch.randint(0, classes, (2048,), generator=g),
        make(512),
        torch.randint(0, classes, (512,), generator=g),
    )


register_dataset("synthetic", _load, info=SYNTHETIC, variant=_shape, usage="synthetic:CxHxW")
