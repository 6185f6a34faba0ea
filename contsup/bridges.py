"""Context-supply bridges: h'_k = h_k + sum_j M_j(c_j), one bridge per boundary.

Every bridge is called as ``bridge(h, [c_1, ...], x)``: the boundary tensor, the
earlier boundary inputs it reads (most recent first) and the raw image. The
learner decides what is detached. ``Bridge`` sums one encoder per source (the
paper's form); an aux design may build its own (``contsup.auxiliary.scaled``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Bridge"]


class Bridge(nn.Module):
    """Adds encoded context to one boundary tensor.

    Example::

        bridge = Bridge([BoundaryEncoder(g_prev, g)], ImageEncoder(image, g))  # paper.py
        h_aug = bridge(h.detach(), [prev.detach()], x)

    ``recent`` encode the earlier tensors this boundary reads, most recent first;
    ``image`` encodes the raw image, or is None without ``E``. A bridge with
    neither (``R0``) returns ``h`` unchanged.
    """

    def __init__(self, recent: Sequence[nn.Module], image: nn.Module | None):
        super().__init__()
        self.recent = nn.ModuleList(recent)
        self.image = image

    def forward(self, h: torch.Tensor, recent: Sequence[torch.Tensor], image: torch.Tensor):
        for encoder, context in zip(self.recent, recent, strict=True):
            h = h + encoder(context)
        if self.image is not None:
            h = h + self.image(image)
        return h
