"""Boundary geometry: channels, spatial grid and layout, and the moves between layouts.

Bridges and heads are convolutional, so every boundary tensor is viewed as an
NCHW feature map and turned back afterwards: NHWC maps (Swin stages) are
permuted; token sequences (ViT, DeiT) drop their class/register tokens and fold
the patch tokens into their grid; flat NC vectors become 1x1 maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from contsup.errors import ContsupError
from partitioner import TensorSpec

__all__ = [
    "Geometry",
    "LayoutError",
    "geometry_of",
    "image_geometry",
    "ToMap",
    "FromMap",
    "pool_to",
]

LAYOUTS = ("NCHW", "NHWC", "NLC", "NC")


class LayoutError(ContsupError):
    """A boundary tensor whose layout context supply cannot read (not a map or token grid)."""


@dataclass(frozen=True)
class Geometry:
    """A boundary tensor seen as a feature map: ``channels`` x ``height`` x ``width``.

    ``prefix_tokens`` counts the class/register tokens before a token grid (NLC).
    """

    layout: str
    channels: int
    height: int
    width: int
    prefix_tokens: int = 0

    def with_grid(self, height: int, width: int) -> Geometry:
        """The same tensor as an NCHW map on another grid (what pooling makes of it)."""
        return Geometry("NCHW", self.channels, height, width)


def image_geometry(example_input: torch.Tensor) -> Geometry:
    _, channels, height, width = example_input.shape
    return Geometry("NCHW", channels, height, width)


def geometry_of(spec: TensorSpec, model: nn.Module) -> Geometry:
    """The geometry of a boundary tensor, using timm's metadata for token grids.

    Example::

        geometry_of(part.boundaries[0].tensors[0], model)   # Geometry('NLC', 192, 14, 14, 1)

    For tokens, ``model.num_prefix_tokens`` says how many leading tokens are not
    patches and ``model.patch_embed.grid_size`` the patch grid; without them the
    token count must be a square.
    """
    shape = spec.shape
    if spec.layout == "NCHW":
        return Geometry("NCHW", shape[1], shape[2], shape[3])
    if spec.layout == "NHWC":
        return Geometry("NHWC", shape[3], shape[1], shape[2])
    if spec.layout == "NC":
        return Geometry("NC", shape[1], 1, 1)
    if spec.layout == "NLC":
        tokens = shape[1]
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is not None and prefix + grid[0] * grid[1] == tokens:
            return Geometry("NLC", shape[2], grid[0], grid[1], prefix)
        for leading in (prefix, 0):
            side = math.isqrt(tokens - leading)
            if side * side == tokens - leading:
                return Geometry("NLC", shape[2], side, side, leading)
        raise LayoutError(
            f"boundary '{spec.node}' has {tokens} tokens that do not form a square grid; "
            "context supply needs a feature map"
        )
    raise LayoutError(
        f"boundary '{spec.node}' has layout {spec.layout} and shape {shape}; context supply "
        f"needs one of {', '.join(LAYOUTS)}"
    )


class ToMap(nn.Module):
    """Boundary tensor -> (B, C, H, W) feature map."""

    def __init__(self, geometry: Geometry):
        super().__init__()
        self.geometry = geometry

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if g.layout == "NHWC":
            return h.permute(0, 3, 1, 2)
        if g.layout == "NLC":
            patches = h[:, g.prefix_tokens :]
            return patches.transpose(1, 2).reshape(h.shape[0], g.channels, g.height, g.width)
        if g.layout == "NC":
            return h[:, :, None, None]
        return h


class FromMap(nn.Module):
    """(B, C, H, W) feature map -> the boundary's layout (prefix tokens get zeros)."""

    def __init__(self, geometry: Geometry):
        super().__init__()
        self.geometry = geometry

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if g.layout == "NHWC":
            return m.permute(0, 2, 3, 1)
        if g.layout == "NLC":
            tokens = m.flatten(2).transpose(1, 2)
            if g.prefix_tokens:
                zeros = tokens.new_zeros(tokens.shape[0], g.prefix_tokens, tokens.shape[2])
                tokens = torch.cat([zeros, tokens], dim=1)
            return tokens
        if g.layout == "NC":
            return m.flatten(1)
        return m


def pool_to(source: Geometry, target: Geometry) -> nn.Module:
    """AdaptiveAvgPool2d from source's H x W to target's, in its cheapest exact form.

    Example::

        pool_to(Geometry("NCHW", 3, 224, 224), Geometry("NCHW", 64, 56, 56))  # AvgPool2d(4, 4)

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
