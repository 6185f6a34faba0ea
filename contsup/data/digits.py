"""scikit-learn's handwritten digits, upsampled to 3x32x32: offline, the default."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contsup.data.batches import DeviceBatches
from contsup.data.info import HALF, DatasetInfo
from contsup.data.registry import LoadOptions, register_dataset

__all__: list[str] = []


def _load(info: DatasetInfo, source: str, options: LoadOptions) -> DeviceBatches:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return DeviceBatches(
        info,
        options.batch_size,
        options.device,
        images[train].contiguous(),
        labels[train],
        images[test].contiguous(),
        labels[test],
    )


register_dataset("digits", _load, info=DatasetInfo("digits", 10, (3, 32, 32), HALF, HALF, 2, False))
