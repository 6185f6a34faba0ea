"""Batch iterators: (normalised input, label, raw image in [0, 1]) on the device.

``DeviceBatches`` hold a whole uint8 dataset on the device and augment it there
(reflect-pad random crop, flip, normalise), so no loader can starve the GPU;
``LoaderBatches`` stream a larger torchvision dataset through a DataLoader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from contsup.data.errors import DataError
from contsup.data.info import DatasetInfo

__all__ = ["Batches", "DeviceBatches", "LoaderBatches", "steps_per_epoch"]


class Batches:
    """Training and test batches of one dataset, already on ``device``.

    Example::

        data = load_dataset("digits", batch_size=64, device="cpu")
        for x, y, raw in data.train(generator): ...
    """

    def __init__(self, info: DatasetInfo, batch_size: int, device: torch.device):
        self.info, self.batch_size, self.device = info, batch_size, torch.device(device)
        self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)

    train_size: int
    test_size: int

    def train(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def test(self) -> Iterator[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def take(self, train: int | None, test: int | None) -> None:
        """Keep only the first ``train`` training and ``test`` test images (None: all)."""
        if train is not None or test is not None:
            raise DataError(
                f"{self.info.name} streams from disk; train_images and test_images work with "
                "the datasets held on the device (cifar*, svhn, digits, mnist, fashion_mnist)"
            )

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std


class DeviceBatches(Batches):
    """A whole uint8 dataset on the device, shuffled and augmented there."""

    def __init__(
        self, info, batch_size, device, train_images, train_labels, test_images, test_labels
    ):
        super().__init__(info, batch_size, device)
        self.train_images = train_images.to(self.device)
        self.train_labels = train_labels.to(self.device)
        self.test_images = test_images.to(self.device)
        self.test_labels = test_labels.to(self.device)
        self.train_size, self.test_size = len(train_labels), len(test_labels)

    def take(self, train: int | None, test: int | None) -> None:
        for name, count in (("train_images", train), ("test_images", test)):
            if count is not None and count < 1:
                raise DataError(f"{name} must be at least 1, got {count}")
        self.train_images, self.train_labels = self.train_images[:train], self.train_labels[:train]
        self.test_images, self.test_labels = self.test_images[:test], self.test_labels[:test]
        self.train_size, self.test_size = len(self.train_labels), len(self.test_labels)

    def train(self, generator: torch.Generator):
        order = torch.randperm(self.train_size, generator=generator)
        for start in range(0, self.train_size, self.batch_size):
            index = order[start : start + self.batch_size].to(self.device)
            raw = self.train_images[index].float().div_(255)
            raw = self.augment(raw, generator)
            yield self.normalise(raw), self.train_labels[index], raw

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Reflect-pad random crop and optional horizontal flip, per image, on the device."""
        n, _, h, w = images.shape
        pad = self.info.pad
        # Draw on the CPU generator, so runs and resumed runs see the same numbers.
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(self.device)
        flips = torch.rand(n, generator=generator).to(self.device) < 0.5
        if pad:
            padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
            rows = offsets[0][:, None] + torch.arange(h, device=self.device)
            cols = offsets[1][:, None] + torch.arange(w, device=self.device)
            batch = torch.arange(n, device=self.device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
            images = images.permute(0, 3, 1, 2)
        if self.info.flip:
            images = torch.where(flips[:, None, None, None], images.flip(3), images)
        return images.contiguous()

    def test(self):
        for start in range(0, self.test_size, self.batch_size):
            raw = self.test_images[start : start + self.batch_size].float().div_(255)
            yield self.normalise(raw), self.test_labels[start : start + self.batch_size], raw


class LoaderBatches(Batches):
    """A torchvision dataset streamed by a DataLoader (workers, pinned memory)."""

    def __init__(self, info, batch_size, device, train_set, test_set, workers: int):
        super().__init__(info, batch_size, device)
        self.train_set, self.test_set, self.workers = train_set, test_set, workers
        self.train_size, self.test_size = len(train_set), len(test_set)

    def _loader(self, dataset, generator=None):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _batches(self, loader):
        for raw, labels in loader:
            raw = raw.to(self.device, non_blocking=True)
            yield self.normalise(raw), labels.to(self.device, non_blocking=True), raw

    def train(self, generator):
        return self._batches(self._loader(self.train_set, generator))

    def test(self):
        return self._batches(self._loader(self.test_set))


def steps_per_epoch(data: Batches) -> int:
    """Batches in one pass over the training set, the last one possibly short.

    Example::

        steps = steps_per_epoch(load_dataset("digits", batch_size=100))  # 15 for 1437 images
    """
    return math.ceil(data.train_size / data.batch_size)
