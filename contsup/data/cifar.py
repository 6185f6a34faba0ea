"""CIFAR-10 and CIFAR-100 (torchvision's files), held on the device."""

from __future__ import annotations

import torch

from contsup.data.batches import DeviceBatches
from contsup.data.info import DatasetInfo
from contsup.data.registry import LoadOptions, missing, register_dataset

__all__ = ["CIFAR_MEAN", "CIFAR_STD"]

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def _load(info: DatasetInfo, source: str, options: LoadOptions) -> DeviceBatches:
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if source == "cifar10" else tvd.CIFAR100
    try:
        train, test = (cls(options.root, train=t, download=options.download) for t in (True, False))
    except RuntimeError as error:
        if "not found" not in str(error) and "corrupted" not in str(error):
            raise
        raise missing(source, options.root) from error
    as_tensor = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return DeviceBatches(
        info,
        options.batch_size,
        options.device,
        as_tensor(train),
        torch.tensor(train.targets),
        as_tensor(test),
        torch.tensor(test.targets),
    )


for _classes in (10, 100):
    register_dataset(
        f"cifar{_classes}",
        _load,
        info=DatasetInfo(f"cifar{_classes}", _classes, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 4, True),
    )
