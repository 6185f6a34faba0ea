"""Batch iterators: (normalised input, label, raw image in [0, 1]) on the device.

``DeviceBatches`` hold a whole uint8 dataset on the device and augment it there
(reflect-pad random crop, flip, normalise), so no loader can starve the GPU;
``LoaderBatches`` stream a larger torchvision dataset through a DataLoader.
Either gives whole batches (``train``, ``test``) or one rank's ``Part`` of each
(``train_parts``, ``test_parts``): the same batches, of which the rank decodes
and augments only its slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from contsup.data.errors import DataError
from contsup.data.info import DatasetInfo
from contsup.data.parts import BatchPart, Part
from contsup.data.seeded import SeededSamples

__all__ = ["Batches", "DeviceBatches", "LoaderBatches", "steps_per_epoch"]


class Batches:
    """Training and test batches of one dataset, already on ``device``.

    Example::

        data = load_dataset("digits", batch_size=64, device="cpu")
        for x, y, raw in data.train(generator): ...
        for part in data.train_parts(generator, Part(index=1, count=2)): ...  # replica 1 of 2
    """

    def __init__(self, info: DatasetInfo, batch_size: int, device: torch.device):
        self.info, self.batch_size, self.device = info, batch_size, torch.device(device)
        self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)

    train_size: int
    test_size: int

    def train(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch's shuffled, augmented batches ``(x, y, raw)``."""
        for part in self.train_parts(generator, Part()):
            yield part.x, part.y, part.raw

    def test(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """The test split's batches ``(x, y, raw)``, in order, not augmented."""
        for part in self.test_parts(Part()):
            yield part.x, part.y, part.raw

    def train_parts(
        self, generator: torch.Generator, part: Part, skip: int = 0
    ) -> Iterator[BatchPart]:
        """``part`` of each of one epoch's batches after the first ``skip``: the batches
        ``train`` gives, whichever part a rank takes. The epoch's order, and the skipped
        batches' random numbers, are drawn from ``generator`` when it is called."""
        raise NotImplementedError

    def test_parts(self, part: Part) -> Iterator[BatchPart]:
        """``part`` of each test batch."""
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


def _batch_starts(size: int, batch_size: int) -> range:
    return range(0, size, batch_size)


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

    def train_parts(self, generator, part, skip=0):
        order = torch.randperm(self.train_size, generator=generator)
        starts = _batch_starts(self.train_size, self.batch_size)
        for start in starts[:skip]:  # drawn now: the generator moves past the trained batches
            self._draw(len(order[start : start + self.batch_size]), generator)
        return self._train_parts(order, starts[skip:], generator, part)

    def _train_parts(self, order, starts, generator, part):
        for start in starts:
            batch = order[start : start + self.batch_size]
            offsets, flips = self._draw(len(batch), generator)  # the whole batch's, on every rank
            mine = part.positions(len(batch))
            if not (part.loads and len(mine)):
                yield BatchPart.nothing(len(batch))
                continue
            cut = slice(mine.start, mine.stop)
            index = batch[cut].to(self.device)
            raw = self.train_images[index].float().div_(255)
            raw = self._augment(raw, offsets[:, cut], flips[cut])
            yield BatchPart(self.normalise(raw), self.train_labels[index], raw, len(batch))

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Reflect-pad random crop and optional horizontal flip, per image, on the device."""
        return self._augment(images, *self._draw(len(images), generator))

    def _draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Each of ``n`` images' crop offsets (2 x n) and whether it is flipped."""
        pad = self.info.pad
        # Drawn on the CPU generator, so runs and resumed runs see the same numbers.
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
        return offsets, torch.rand(n, generator=generator) < 0.5

    def _augment(self, images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor):
        n, _, h, w = images.shape
        pad = self.info.pad
        offsets, flips = offsets.to(self.device), flips.to(self.device)
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

    def test_parts(self, part):
        for start in _batch_starts(self.test_size, self.batch_size):
            total = min(self.batch_size, self.test_size - start)
            mine = part.positions(total)
            if not (part.loads and len(mine)):
                yield BatchPart.nothing(total)
                continue
            rows = slice(start + mine.start, start + mine.stop)
            raw = self.test_images[rows].float().div_(255)
            yield BatchPart(self.normalise(raw), self.test_labels[rows], raw, total)


class LoaderBatches(Batches):
    """A torchvision dataset streamed by a DataLoader (workers, pinned memory)."""

    def __init__(self, info, batch_size, device, train_set, test_set, workers: int):
        super().__init__(info, batch_size, device)
        self.train_set, self.test_set, self.workers = train_set, test_set, workers
        self.train_size, self.test_size = len(train_set), len(test_set)

    def train_parts(self, generator, part, skip=0):
        order = torch.randperm(self.train_size, generator=generator)
        # One seed per sample: its augmentation is the same whichever rank or worker decodes it.
        seeds = torch.randint(0, 2**62, (self.train_size,), generator=generator)
        return self._parts(SeededSamples(self.train_set, order, seeds), part, skip)

    def test_parts(self, part):
        return self._parts(SeededSamples(self.test_set), part, 0)

    def _parts(self, samples: SeededSamples, part: Part, skip: int) -> Iterator[BatchPart]:
        """``part`` of each batch of ``samples`` after the first ``skip``: one DataLoader
        decodes this rank's slices, and nothing else."""
        starts = _batch_starts(len(samples), self.batch_size)[skip:]
        totals = [min(self.batch_size, len(samples) - start) for start in starts]
        slices = [
            [start + i for i in part.positions(total)] if part.loads else []
            for start, total in zip(starts, totals)
        ]
        loaded = [positions for positions in slices if positions]
        batches = iter(self._loader(samples, loaded)) if loaded else iter(())
        for total, positions in zip(totals, slices):
            if not positions:
                yield BatchPart.nothing(total)
                continue
            raw, labels = next(batches)
            raw = raw.to(self.device, non_blocking=True)
            yield BatchPart(
                self.normalise(raw), labels.to(self.device, non_blocking=True), raw, total
            )

    def _loader(self, samples: SeededSamples, batches: list[list[int]]):
        return torch.utils.data.DataLoader(
            samples,
            batch_sampler=batches,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # Its own generator (the workers' seeds, unused: samples are seeded), so
            # neither the run's generator nor the global random state moves.
            generator=torch.Generator().manual_seed(0),
        )


def steps_per_epoch(data: Batches) -> int:
    """Batches in one pass over the training set, the last one possibly short.

    Example::

        steps = steps_per_epoch(load_dataset("digits", batch_size=100))  # 15 for 1437 images
    """
    return math.ceil(data.train_size / data.batch_size)
