"""Which images of each global batch a rank loads: its ``Part``, and the ``BatchPart`` it gets.

The global batches (order and augmentation) are one process's, drawn from one
generator on every rank; a rank then decodes and augments only its slice of each
batch, the slice ``torch.tensor_split`` gives replica ``index`` of ``count``. A
rank that loads nothing (a later pipeline stage, which receives what it needs
from the stage before) still draws the same random numbers, so every rank's
generator stays where one process's would be.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BatchPart", "Part"]


@dataclass(frozen=True)
class Part:
    """Slice ``index`` of ``count`` of every batch, loaded only where ``loads``.

    Example::

        >>> part = Part(index=1, count=2)
        >>> part.positions(5), part.size(5)
        (range(3, 5), 2)
        >>> Part().positions(3)               # one process: the whole batch
        range(0, 3)
    """

    index: int = 0
    count: int = 1
    loads: bool = True

    def positions(self, total: int) -> range:
        """Where this slice sits in a batch of ``total`` images: contiguous, the slices'
        sizes differing by at most 1, as ``Tensor.tensor_split`` cuts a batch."""
        start = self.index * (total // self.count) + min(self.index, total % self.count)
        return range(start, start + self.size(total))

    def size(self, total: int) -> int:
        """How many of a batch of ``total`` images are this slice's (maybe 0)."""
        return total // self.count + (1 if self.index < total % self.count else 0)


@dataclass
class BatchPart:
    """A rank's part of one global batch of ``total`` images: its slice's normalised
    inputs ``x``, labels ``y`` and un-normalised images ``raw`` in [0, 1]; all None
    where the rank loads nothing or its slice is empty."""

    x: torch.Tensor | None
    y: torch.Tensor | None
    raw: torch.Tensor | None
    total: int

    @classmethod
    def nothing(cls, total: int) -> BatchPart:
        """The part of a rank that loads none of a batch of ``total`` images."""
        return cls(None, None, None, total)
