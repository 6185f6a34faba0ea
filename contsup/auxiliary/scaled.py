"""Aux modules that stay small at any input size: the default design.

The paper's modules (``contsup.auxiliary.paper``) were built for 32 px: the ``E``
encoder runs two 3x3 convs on the full-resolution image, ``Rn`` encoders a
full-width 1x1 conv before pooling, and heads widen to the network's width. At
224 px they save more for backward than the segments they serve. The rules here:

* Pool first. Nothing learned runs above the boundary's grid (the image encoder
  looks at a grid twice as fine, through one patchify conv; ``Rn`` encoders work
  on half the grid and upsample, so the earlier boundary they must save for
  their weight gradient is a quarter of its size). Pooling a detached input
  records nothing for backward, and nearest upsampling saves nothing either.
* Narrow and fixed widths: ``Rn`` and ``E`` encoders have 16 channels, heads
  work at min(C, 32) channels on a grid of at most 16x16. Nothing widens past
  the boundary's channels.
* No C-wide work but one copy. Each source has a narrow encoder (conv -> ReLU,
  16 channels; no BatchNorm, which would save a second tensor); their outputs,
  times a learned per-channel gain, are added to the boundary's first channels
  and the next segment's layers learn to read them. The gain starts at zero, so
  a bridge starts as the identity (h' = h): context is learned in, never
  injected as noise.
* Token layouts (ViT): heads take the mean over patch tokens, then LayerNorm and
  an MLP; no spatial conv.

Bridges, on the boundary's grid H x W: h' = h + [gain * concat(...); 0], of

* image (``E``): pool to 2H x 2W -> Conv2x2/2(3 -> 16) -> ReLU;
* each earlier boundary (``Rn``): pool to H/2 x W/2 -> Conv1x1(C_in -> 16) -> ReLU
  -> nearest upsample to H x W.

Heads ``<a>c<b>f`` on maps: pool to <= 16x16 (whole windows), then for a >= 1 a
Conv1x1(C -> w) -> BN -> ReLU and a Conv3x3(w -> w) -> BN -> ReLU per conv layer,
GAP, and the b linear layers. ``0c1f`` is GAP -> Linear, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from contsup.auxiliary import AuxDesign
from contsup.geometry import FromMap, Geometry, ToMap, pool_to
from contsup.heads import linear_layers, parse_head

__all__ = [
    "DESIGN",
    "ImageEncoder",
    "BoundaryEncoder",
    "FusedBridge",
    "build_head",
    "ReconstructionDecoder",
]

RANK = 16  # Rn encoders: C_in -> RANK -> C
IMAGE_HIDDEN = 16  # E encoder's hidden channels
HEAD_WIDTH = 32  # heads' conv channels (fewer if the boundary has fewer)
HEAD_GRID = 16  # heads pool their map to at most this many cells a side


def _norm_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class ImageEncoder(nn.Sequential):
    """``E``'s narrow half: the image, area-pooled to twice the grid, a patchify conv, ReLU."""

    def __init__(self, image: Geometry, target: Geometry, hidden: int = IMAGE_HIDDEN):
        patch = 2 if image.height >= 2 * target.height and image.width >= 2 * target.width else 1
        fine = image.with_grid(patch * target.height, patch * target.width)
        super().__init__(
            pool_to(image, fine),
            nn.Conv2d(image.channels, hidden, patch, patch),
            nn.ReLU(inplace=True),
        )


class BoundaryEncoder(nn.Sequential):
    """``Rn``'s narrow half: an earlier boundary on half the grid, 1x1 to 16, ReLU, upsampled."""

    def __init__(self, source: Geometry, target: Geometry, rank: int = RANK):
        coarse = source.with_grid(math.ceil(target.height / 2), math.ceil(target.width / 2))
        super().__init__(
            ToMap(source),
            pool_to(source, coarse),
            nn.Conv2d(source.channels, rank, 1),
            nn.ReLU(inplace=True),
            nn.Upsample(size=(target.height, target.width), mode="nearest"),
        )


class FusedBridge(nn.Module):
    """h' = h + [g * concat(E(x), R_1(c_1), ...); 0]: context added to h's first channels.

    Example::

        bridge = FusedBridge(target, [previous], image)
        h_aug = bridge(h.detach(), [prev.detach()], x)

    Each source gets a narrow encoder (16 channels on the boundary's grid). Their
    outputs, scaled by a learned per-channel gain that starts at zero, are added
    to the first 16 n of the boundary's C channels; the next segment's own
    layers learn to read them. No C-wide conv runs: at large grids that conv
    cost as much time as a whole residual block, while this bridge costs one
    C-wide copy. Boundaries with fewer channels than the encoders give each
    encoder an equal share of them.
    """

    def __init__(self, target: Geometry, sources: Sequence[Geometry], image: Geometry | None):
        super().__init__()
        count = len(sources) + (image is not None)
        if count > target.channels:
            raise ValueError(
                f"a boundary of {target.channels} channels cannot take {count} context sources"
            )
        width = min(RANK, target.channels // count) if count else 0
        self.recent = nn.ModuleList(BoundaryEncoder(g, target, width) for g in sources)
        self.image = ImageEncoder(image, target, width) if image is not None else None
        self.width = width * count
        self.gain = nn.Parameter(torch.zeros(1, self.width, 1, 1)) if count else None
        self.layout = target.layout
        self.to_boundary = FromMap(replace(target, channels=self.width))

    def forward(self, h: torch.Tensor, recent: Sequence[torch.Tensor], image: torch.Tensor):
        if self.gain is None:
            return h
        parts = [encoder(c) for encoder, c in zip(self.recent, recent, strict=True)]
        if self.image is not None:
            parts.append(self.image(image))
        context = self.to_boundary(torch.cat(parts, dim=1) * self.gain)
        dim = 1 if self.layout == "NCHW" else -1
        first, rest = h.split([self.width, h.shape[dim] - self.width], dim=dim)
        return torch.cat([first + context, rest], dim=dim)


class TokenMean(nn.Module):
    """(B, L, C) tokens -> (B, C): the mean over patch tokens (prefix tokens skipped)."""

    def __init__(self, prefix_tokens: int):
        super().__init__()
        self.prefix_tokens = prefix_tokens

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, self.prefix_tokens :].mean(1)


def _head_grid(geometry: Geometry) -> Geometry:
    """The grid a head pools to: whole windows, at most ``HEAD_GRID`` cells a side."""
    rows = math.ceil(geometry.height / math.ceil(geometry.height / HEAD_GRID))
    cols = math.ceil(geometry.width / math.ceil(geometry.width / HEAD_GRID))
    return geometry.with_grid(rows, cols)


def build_head(config: str, geometry: Geometry, out_features: int, width: int) -> nn.Sequential:
    """A local head that costs little at any resolution.

    Example::

        head = build_head("1c2f", Geometry("NCHW", 1024, 14, 14), out_features=1000, width=2048)

    ``width`` (the network's final width) is not needed: widths here are fixed.
    """
    convs, linears = parse_head(config)
    channels = geometry.channels
    if geometry.layout == "NLC":
        # Mean first, then normalise: the head saves B x C, not every token.
        layers: list[nn.Module] = [TokenMean(geometry.prefix_tokens), nn.LayerNorm(channels)]
        for _ in range(convs):
            hidden = min(channels, HEAD_WIDTH)
            layers += [nn.Linear(channels, hidden), nn.GELU()]
            channels = hidden
        return nn.Sequential(*layers, *linear_layers(channels, linears, out_features))
    layers = [ToMap(geometry)]
    if convs:
        grid = _head_grid(geometry)
        hidden = min(channels, HEAD_WIDTH)
        layers += [pool_to(geometry, grid), nn.Conv2d(channels, hidden, 1, bias=False)]
        layers += _norm_relu(hidden)
        for _ in range(convs):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), *_norm_relu(hidden)]
        channels = hidden
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return nn.Sequential(*layers, *linear_layers(channels, linears, out_features))


class ReconstructionDecoder(nn.Sequential):
    """Boundary -> image in [0, 1]: shrink to 12 channels first, then upsample."""

    def __init__(self, geometry: Geometry, image: Geometry, hidden: int = 12):
        super().__init__(
            ToMap(geometry),
            nn.Conv2d(geometry.channels, hidden, 1, bias=False),
            *_norm_relu(hidden),
            nn.Upsample(size=(image.height, image.width), mode="bilinear", align_corners=True),
            nn.Conv2d(hidden, image.channels, 3, padding=1),
            nn.Sigmoid(),
        )


DESIGN = AuxDesign("scaled", FusedBridge, build_head, ReconstructionDecoder)
