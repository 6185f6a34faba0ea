"""SVHN (torchvision's files), held on the device."""

from __future__ import annotations

import torch

from contsup.data.batches import DeviceBatches
from contsup.data.info import HALF, DatasetInfo
from contsup.data.registry import LoadOptions, missing, register_dataset

__all__: list[str] = []


def _load(info: DatasetInfo, source: str, options: LoadOptions) -> DeviceBatches:
    import torchvision.datasets as tvd

    try:
        train, test = (
            tvd.SVHN(options.root, split=s, download=options.download) for s in ("train", "test")
        )
    except RuntimeError as error:
        if "not found" not in str(error) and "corrupted" not in str(error):
            raise
        raise missing(source, options.root) from error
    return DeviceBatches(
        info,
        options.batch_size,
        options.device,
        torch.from_numpy(train.data),
        torch.from_numpy(train.labels).long(),
        torch.from_numpy(test.data),
        torch.from_numpy(test.labels).long(),
    )


register_dataset("svhn", _load, info=DatasetInfo("svhn", 10, (3, 32, 32), HALF, HALF, 2, False))
