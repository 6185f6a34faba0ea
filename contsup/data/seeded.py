"""Samples whose random transform is seeded per sample, so any process decodes the same.

A DataLoader's augmentation draws from the random state of the process or
worker that decodes a sample, so it would change with the number of workers and
with which rank decodes which image. ``SeededSamples`` seeds each sample's
transform from a number drawn for it in advance, by one generator for the whole
world: a sample's augmentation is the same wherever it is decoded.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SeededSamples", "seeded"]


@contextmanager
def seeded(seed: int, restore: bool = True) -> Iterator[None]:
    """Run the block with torch's CPU generator, ``random`` and numpy's global state
    seeded by ``seed`` (the transforms of torchvision and timm draw from these), and
    with ``restore`` put them back after.

    Example::

        with seeded(7):
            crop = transform(image)      # the same crop at every call

    A DataLoader worker need not restore: nothing else draws from its random state,
    and saving and restoring numpy's takes 0.1 ms a sample, ten times the seeding.
    """
    saved = (torch.get_rng_state(), random.getstate(), np.random.get_state()) if restore else None
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class SeededSamples(Dataset):
    """Item ``i`` is ``dataset[order[i]]``, its transform seeded with ``seeds[i]``.

    Example::

        order = torch.randperm(len(images), generator=g)
        seeds = torch.randint(0, 2**62, (len(images),), generator=g)
        epoch = SeededSamples(images, order, seeds)   # epoch[i]: the i-th sample of the epoch

    ``order`` None: the dataset's own order; ``seeds`` None: transforms that draw
    nothing (the test split's), run as they are.
    """

    def __init__(
        self, dataset: Dataset, order: torch.Tensor | None = None, seeds: torch.Tensor | None = None
    ):
        self.dataset, self.order, self.seeds = dataset, order, seeds

    def __len__(self) -> int:
        return len(self.dataset) if self.order is None else len(self.order)

    def __getitem__(self, i: int):
        index = i if self.order is None else int(self.order[i])
        if self.seeds is None:
            return self.dataset[index]
        in_worker = torch.utils.data.get_worker_info() is not None
        with seeded(int(self.seeds[i]), restore=not in_worker):
            return self.dataset[index]
