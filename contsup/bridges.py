"""Context-supply bridges: h'_k = h_k + sum_j M_j(c_j), one bridge per boundary.

Encoders follow the paper exactly for feature maps:

* image (``E``): Conv3x3(3->12, bias) -> BN -> ReLU -> Conv3x3(12->C) -> BN -> ReLU
  -> AdaptiveAvgPool2d(H x W), on the full-resolution image;
* earlier boundary (``Rn``): Conv1x1(C_in->C, bias) -> BN -> ReLU -> AdaptiveAvgPool2d(H x W).

The pooling takes its cheapest exact form (``pool_to``).

Other layouts pass through ``ToMap``/``FromMap``. The learner decides what is
detached; a bridge only adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from contsup.geometry import FromMap, Geometry, ToMap

__all__ = ["ImageEncoder", "BoundaryEncoder", "Bridge", "pool_to"]


def pool_to(source: Geometry, target: Geometry) -> nn.Module:
    """AdaptiveAvgPool2d from source's H x W to target's, in its cheapest exact form.

    Equal sizes need no pooling and whole-number ratios are plain average pooling
    (the same windows); only other ratios need the adaptive kernel, which is
    several times slower on CPU.
    """
    size = (source.height, source.width)
    out = (target.height, target.width)
    if size == out:
        return nn.Identity()
    if size[0] % out[0] == 0 and size[1] % out[1] == 0:
        ratio = (size[0] // out[0], size[1] // out[1])
        return nn.AvgPool2d(ratio, ratio)
    return nn.AdaptiveAvgPool2d(out)


class ImageEncoder(nn.Sequential):
    """The ``E`` encoder: raw image -> a tensor shaped like the boundary."""

    def __init__(self, image: Geometry, target: Geometry, hidden: int = 12):
        super().__init__(
            nn.Conv2d(image.channels, hidden, 3, padding=1, bias=True),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, target.channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(target.channels),
            nn.ReLU(inplace=True),
            pool_to(image, target),
            FromMap(target),
        )


class BoundaryEncoder(nn.Sequential):
    """The ``Rn`` encoder: an earlier boundary input -> a tensor shaped like this boundary."""

    def __init__(self, source: Geometry, target: Geometry):
        super().__init__(
            ToMap(source),
            nn.Conv2d(source.channels, target.channels, 1, bias=True),
            nn.BatchNorm2d(target.channels),
            nn.ReLU(inplace=True),
            pool_to(source, target),
            FromMap(target),
        )


class Bridge(nn.Module):
    """Adds encoded context to one boundary tensor.

    Example::

        bridge = Bridge(target, recent=[g_prev], image=image_geometry(x))
        h_aug = bridge(h.detach(), [prev.detach()], x)

    ``recent`` are the geometries of the earlier tensors this boundary reads, most
    recent first; ``image`` the raw image's geometry, or None without ``E``. A
    bridge with neither (``R0``) returns ``h`` unchanged.
    """

    def __init__(self, target: Geometry, recent: Sequence[Geometry], image: Geometry | None):
        super().__init__()
        self.recent = nn.ModuleList(BoundaryEncoder(g, target) for g in recent)
        self.image = ImageEncoder(image, target) if image is not None else None

    def forward(self, h: torch.Tensor, recent: Sequence[torch.Tensor], image: torch.Tensor):
        for encoder, context in zip(self.recent, recent, strict=True):
            h = h + encoder(context)
        if self.image is not None:
            h = h + self.image(image)
        return h
