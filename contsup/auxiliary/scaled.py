"""Aux modules that stay small at any input size: the thin design.

The default design, ``sized`` (``contsup.auxiliary.sized``), uses these heads
and bridges where the paper's would cost too much (at 224 px: every head and
every bridge that reads the image).

The paper's modules (``contsup.auxiliary.paper``) were built for 32 px: the ``E``
encoder runs two 3x3 convs on the full-resolution image, ``Rn`` encoders a
full-width 1x1 conv before pooling, and heads widen to the network's width. At
224 px they save more for backward than the segments they serve. The rules here:

* Pool first. Nothing learned runs above the boundary's grid. Encoders work on
  half the grid, halved again down to at most 16x16, and the bridge upsamples
  (the image encoder looks at a grid twice as fine as its own, through one patchify conv),
  so their convs cost a quarter or less, and the earlier boundary an ``Rn``
  encoder must save for its weight gradient is a quarter of its size or less.
  (At 32 px no grid is over 16x16 after halving; at 224 px the 16x16 limit cut
  mobilenetv3_large_100's aux FLOPs at K=16 from 5.8% to 3.6%.) Pooling a
  detached input records nothing for backward, and nearest upsampling saves
  nothing either. Heads pool whole windows (``WindowMean``, ``windows.window_mean``),
  which saves nothing of the boundary.
* Narrow widths that follow the boundary: encoders have at most 16 channels,
  heads at most 32 on a grid of at most 8x8, and fewer where their convs would
  cost more than ``HEAD_MACS`` multiply-adds per value of the boundary. On
  networks whose layers are cheap (efficientnet_b0, mobilenetv3 at K=16) heads of
  a fixed 32 channels on 16x16 cost 12-16% of the backbone's FLOPs. Nothing widens
  past the boundary's channels.
* Narrow context at full strength. Each source has a narrow encoder (conv ->
  ReLU, 16 channels; no BatchNorm, which would save a second tensor); their
  outputs are added to the boundary's first 16 n channels, and the next
  segment's layers learn to read them. No learned gain: the gain that started
  at zero in contsup 0.2 kept the encoders from learning until it had grown,
  and cost most of the R1E - R0 gain in the ablation (docs/context.md). Wider
  context does not help without it: summed over all C channels at full
  strength, it made training unstable there.
* Token layouts (ViT): heads take the mean over patch tokens, then LayerNorm and
  an MLP; no spatial conv.

Bridges, on the boundary's grid H x W: h' = h + [concat(...); 0], of

* image (``E``): pool to 2H' x 2W' (H' = ceil(H / d), d = 2, doubled while H' or W'
  is over 16) -> Conv2x2/2(3 -> 16) -> ReLU;
* each earlier boundary (``Rn``): pool to H' x W' -> Conv1x1(C_in -> 16) -> ReLU;

nearest-upsampled to H x W as they are added (``windows.add_to_band``, one copy
of h and nothing upsampled in memory, where H' x W' tiles H x W in windows of at
least ``TILE_MIN`` a side: at mobilenetv3's 56x56 boundaries a third faster).

Heads ``<a>c<b>f`` on maps: pool to <= 8x8 (whole windows), then for a >= 1 a
Conv1x1(C -> w) -> BN -> ReLU and a Conv3x3(w -> w) -> BN -> ReLU per conv layer
(w from ``head_width``), GAP, and the b linear layers. ``0c1f`` is GAP -> Linear,
as in the paper.

``scaled-0.2`` builds contsup 0.2's modules (32-channel heads on <= 16x16, ``E``
on the full grid, a gain from zero), so its runs load as trained.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from contsup.auxiliary.design import AuxDesign, BoundaryTooNarrowError, register_design
from contsup.auxiliary.windows import add_to_band, window_mean
from contsup.geometry import FromMap, Geometry, ToMap, pool_to
from contsup.heads import linear_layers, parse_head

__all__ = [
    "DESIGN",
    "LEGACY",
    "LEGACY_STYLE",
    "BridgeStyle",
    "ImageEncoder",
    "BoundaryEncoder",
    "FusedBridge",
    "HeadStyle",
    "LEGACY_HEAD",
    "build_head",
    "build_legacy_head",
    "head_conv_macs",
    "head_width",
    "ReconstructionDecoder",
    "design_of",
]

CONTEXT_WIDTH = 16  # channels each source's encoder adds to the boundary
IMAGE_HIDDEN = 16  # E encoder's hidden channels
COARSE_GRID = 16  # a half-grid encoder works on at most this many cells a side
HEAD_WIDTH = 32  # heads' conv channels at most (fewer if the boundary has fewer)
HEAD_MIN_WIDTH = 8  # ... and at least, whatever the budget (fewer if the boundary has fewer)
HEAD_GRID = 8  # heads pool their map to at most this many cells a side
HEAD_MACS = 16  # multiply-adds a head's convs may spend per value of its boundary
TILE_MIN = 4  # windows a side from which a bridge adds context with add_to_band


def _norm_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


@dataclass(frozen=True)
class BridgeStyle:
    """The choices inside a scaled bridge; the defaults are the ``scaled`` design's.

    ``band``: channels each source's encoder gives (at most C), or None for all C;
    ``combine``: ``concat`` (each source adds to its own share of the boundary's
    first channels) or ``sum`` (all add to the same first channels, as the
    paper's encoders add to all C); ``norm``:
    BatchNorm after each encoder's conv; ``gain``: ``zero`` (a learned per-channel
    gain that starts at 0) or ``none``; ``recent_grid``: ``half`` or ``full``, the
    grid ``Rn`` encoders work on, and ``image_grid`` the one ``E`` works on, a half
    grid halved again down to ``coarse_grid`` cells a side at most; ``image``:
    ``patchify`` (one 2x2 conv) or ``conv3x3`` (two 3x3 convs, as the paper's E, on
    the image pooled to at most twice the encoder's grid).
    """

    band: int | None = CONTEXT_WIDTH
    combine: str = "concat"
    norm: bool = False
    gain: str = "none"
    recent_grid: str = "half"
    image: str = "patchify"
    image_grid: str = "half"
    coarse_grid: int | None = COARSE_GRID


def _act(channels: int, norm: bool) -> list[nn.Module]:
    return _norm_relu(channels) if norm else [nn.ReLU(inplace=True)]


def _fine_grid(image: Geometry, target: Geometry) -> tuple[Geometry, int]:
    """The image pooled to twice ``target``'s grid (or to ``target``'s, if smaller)."""
    patch = 2 if image.height >= 2 * target.height and image.width >= 2 * target.width else 1
    return image.with_grid(patch * target.height, patch * target.width), patch


def _divided(target: Geometry, grid: str, coarsest: int | None) -> Geometry:
    """The grid an encoder works on: the boundary's (``full``), or half of it (``half``)
    halved again until it is at most ``coarsest`` cells a side (None: no limit)."""
    divide = 1
    if grid == "half":
        divide = 2
        while coarsest is not None and max(target.height, target.width) > coarsest * divide:
            divide *= 2
    return target.with_grid(math.ceil(target.height / divide), math.ceil(target.width / divide))


class ImageEncoder(nn.Sequential):
    """``E``'s narrow half: the image, area-pooled to twice its grid, then convs to the grid.

    Its ``grid`` is half the boundary's, at most ``style.coarse_grid`` a side (the
    bridge upsamples), unless ``style.image_grid`` is ``full``: at half the grid
    its conv costs a quarter, and it saves a quarter.
    """

    def __init__(self, image: Geometry, target: Geometry, out: int, style: BridgeStyle):
        grid = _divided(target, style.image_grid, style.coarse_grid)
        fine, patch = _fine_grid(image, grid)
        if style.image == "patchify":
            convs = [nn.Conv2d(image.channels, out, patch, patch), *_act(out, style.norm)]
        else:
            convs = [
                nn.Conv2d(image.channels, IMAGE_HIDDEN, 3, padding=1),
                *_act(IMAGE_HIDDEN, style.norm),
                nn.Conv2d(IMAGE_HIDDEN, out, 3, padding=1),
                *_act(out, style.norm),
                pool_to(fine, grid),
            ]
        super().__init__(pool_to(image, fine), *convs)
        self.grid = (grid.height, grid.width)


class BoundaryEncoder(nn.Sequential):
    """``Rn``'s narrow half: an earlier boundary pooled to (half) the ``grid``, 1x1 conv,
    ReLU (the bridge upsamples)."""

    def __init__(self, source: Geometry, target: Geometry, out: int, style: BridgeStyle):
        coarse = _divided(target, style.recent_grid, style.coarse_grid)
        layers = [ToMap(source), pool_to(source, coarse), nn.Conv2d(source.channels, out, 1)]
        super().__init__(*layers, *_act(out, style.norm))
        self.grid = (coarse.height, coarse.width)


class FusedBridge(nn.Module):
    """h' = h + [concat(E(x), R_1(c_1), ...); 0]: context added to h's first channels.

    Example::

        bridge = FusedBridge(target, [previous], image)
        h_aug = bridge(h.detach(), [prev.detach()], x)

    Each source gets a narrow encoder (16 channels on the boundary's grid). Their
    outputs are added to the first 16 n of the boundary's C channels; the next
    segment's own layers learn to read them. No C-wide conv runs: at large grids
    that conv cost as much time as a whole residual block, while this bridge
    costs one C-wide copy. Boundaries with fewer channels than the encoders give
    each encoder an equal share of them. ``style`` changes these choices (the
    ablation in docs/context.md).
    """

    def __init__(
        self,
        target: Geometry,
        sources: Sequence[Geometry],
        image: Geometry | None,
        style: BridgeStyle = BridgeStyle(),
    ):
        super().__init__()
        count = len(sources) + (image is not None)
        if count > target.channels:
            raise BoundaryTooNarrowError(
                f"a boundary of {target.channels} channels cannot take {count} context sources"
            )
        self.summed = style.combine == "sum"
        band = target.channels if style.band is None else min(style.band, target.channels)
        width = band if self.summed else min(band, target.channels // max(count, 1))
        self.recent = nn.ModuleList(BoundaryEncoder(g, target, width, style) for g in sources)
        self.image = ImageEncoder(image, target, width, style) if image is not None else None
        self.width = width if self.summed or not count else width * count
        self.count = count
        gain = count and style.gain == "zero"
        self.gain = nn.Parameter(torch.zeros(1, self.width, 1, 1)) if gain else None
        self.layout = target.layout
        self.to_boundary = FromMap(replace(target, channels=self.width))
        self.grid = (target.height, target.width)
        grids = {e.grid for e in (*self.recent, *([self.image] if self.image else []))}
        # One grid that tiles the boundary's in large windows: combine there and add with
        # add_to_band. (With 2x2 windows, upsampling each part and a concatenation is faster.)
        self.tiles = (
            target.layout == "NCHW"
            and len(grids) == 1
            and all(
                size % part == 0 and size // part >= TILE_MIN
                for size, part in zip(self.grid, next(iter(grids)))
            )
        )

    def forward(self, h: torch.Tensor, recent: Sequence[torch.Tensor], image: torch.Tensor):
        if not self.count:
            return h
        parts = [encoder(c) for encoder, c in zip(self.recent, recent, strict=True)]
        if self.image is not None:
            parts.append(self.image(image))
        if not self.tiles:
            parts = [p if p.shape[-2:] == self.grid else _nearest(p, self.grid) for p in parts]
        context = sum(parts[1:], parts[0]) if self.summed else torch.cat(parts, dim=1)
        if self.gain is not None:
            context = context * self.gain
        if self.tiles:
            return add_to_band(h, context)
        context = self.to_boundary(context)
        dim = 1 if self.layout == "NCHW" else -1
        if self.width == h.shape[dim]:
            return h + context
        first, rest = h.split([self.width, h.shape[dim] - self.width], dim=dim)
        return torch.cat([first + context, rest], dim=dim)


def _nearest(part: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return nn.functional.interpolate(part, size=grid, mode="nearest")


class TokenMean(nn.Module):
    """(B, L, C) tokens -> (B, C): the mean over patch tokens (prefix tokens skipped)."""

    def __init__(self, prefix_tokens: int):
        super().__init__()
        self.prefix_tokens = prefix_tokens

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, self.prefix_tokens :].mean(1)


@dataclass(frozen=True)
class HeadStyle:
    """How a scaled head sizes itself; the defaults are the ``scaled`` design's.

    ``grid``: the most cells a side its convs run on; ``macs``: multiply-adds its
    convs may spend per value of the boundary (the width shrinks to fit, down to
    ``HEAD_MIN_WIDTH``), or None for ``HEAD_WIDTH`` at any boundary (contsup 0.2's).
    """

    grid: int = HEAD_GRID
    macs: float | None = HEAD_MACS


LEGACY_HEAD = HeadStyle(grid=16, macs=None)  # contsup 0.2's heads: 32 channels on <= 16x16


class WindowMean(nn.Module):
    """Average pooling over whole ``window``s (``windows.window_mean``).

    Example::

        WindowMean((4, 4))(torch.randn(2, 40, 28, 28)).shape  # (2, 40, 7, 7)

    The same averages as ``AvgPool2d(window)``, but its backward keeps nothing:
    ``avg_pool2d`` saves its input, and a head's input is the segment's output, which
    the segment itself often does not keep (a block ending in BatchNorm or an add).
    Saved, it was one more boundary-sized tensor per step: 147 MiB of
    efficientnet_b0's 905 MiB at K=4, batch 32.
    """

    def __init__(self, window: tuple[int, int]):
        super().__init__()
        self.window = window

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return window_mean(h, self.window)


def _head_pool(geometry: Geometry, grid: Geometry) -> nn.Module:
    """``pool_to``, with whole windows pooled by ``WindowMean`` (which saves nothing)."""
    if geometry.height % grid.height or geometry.width % grid.width:
        return pool_to(geometry, grid)
    window = (geometry.height // grid.height, geometry.width // grid.width)
    return nn.Identity() if window == (1, 1) else WindowMean(window)


def _head_grid(geometry: Geometry, most: int) -> Geometry:
    """The grid a head pools to: whole windows, at most ``most`` cells a side."""
    rows = math.ceil(geometry.height / math.ceil(geometry.height / most))
    cols = math.ceil(geometry.width / math.ceil(geometry.width / most))
    return geometry.with_grid(rows, cols)


def head_conv_macs(channels: int, width: int, cells: int, convs: int) -> int:
    """Multiply-adds per image of a head's convs: a 1x1 to ``width``, then ``convs`` 3x3.

    Example::

        >>> head_conv_macs(channels=40, width=16, cells=49, convs=1)  # 49 * (40*16 + 9*16*16)
        144256
    """
    return cells * (channels * width + convs * 9 * width * width)


def head_width(geometry: Geometry, convs: int, style: HeadStyle = HeadStyle()) -> int:
    """A head's conv channels at ``geometry``: the most whose convs fit the style's budget.

    Example::

        >>> head_width(Geometry("NCHW", 40, 28, 28), convs=1)  # 16 x 40 x 28 x 28 MACs
        31
        >>> head_width(Geometry("NCHW", 256, 56, 56), convs=1)
        32

    The budget is ``style.macs`` per value of the boundary (C x H x W), so the head
    costs little next to the layers that make and read that boundary: narrow or small
    boundaries (where each backbone layer is cheap) get narrow heads. Between
    ``HEAD_MIN_WIDTH`` and ``HEAD_WIDTH``, and never wider than the boundary.
    """
    channels = geometry.channels
    widest, narrowest = min(channels, HEAD_WIDTH), min(channels, HEAD_MIN_WIDTH)
    if style.macs is None:
        return widest
    grid = _head_grid(geometry, style.grid)
    cells = grid.height * grid.width
    budget = style.macs * channels * geometry.height * geometry.width
    fits = (
        w
        for w in range(widest, narrowest, -1)
        if head_conv_macs(channels, w, cells, convs) <= budget
    )
    return next(fits, narrowest)


def build_head(
    config: str,
    geometry: Geometry,
    out_features: int,
    width: int,
    style: HeadStyle = HeadStyle(),
) -> nn.Sequential:
    """A local head that costs little at any resolution.

    Example::

        head = build_head("1c2f", Geometry("NCHW", 1024, 14, 14), out_features=1000, width=2048)

    ``width`` (the network's final width) is not needed: widths here follow the
    boundary (``head_width``).
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
        grid = _head_grid(geometry, style.grid)
        hidden = head_width(geometry, convs, style)
        layers += [_head_pool(geometry, grid), nn.Conv2d(channels, hidden, 1, bias=False)]
        layers += _norm_relu(hidden)
        for _ in range(convs):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), *_norm_relu(hidden)]
        channels = hidden
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    return nn.Sequential(*layers, *linear_layers(channels, linears, out_features))


build_legacy_head = partial(build_head, style=LEGACY_HEAD)


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


DESIGN = register_design(AuxDesign("scaled", FusedBridge, build_head, ReconstructionDecoder))
# contsup 0.2's default: the same, with a learned gain that starts at zero on every
# bridge. Runs and exports of 0.2 hold those gains and rebuild with it.
LEGACY_STYLE = BridgeStyle(gain="zero", image_grid="full", coarse_grid=None)
LEGACY = register_design(
    AuxDesign(
        "scaled-0.2",
        partial(FusedBridge, style=LEGACY_STYLE),
        build_legacy_head,
        ReconstructionDecoder,
    )
)
_LEGACY_GAIN = re.compile(r"bridges\.\d+\.gain$")


def design_of(aux: str, names: Iterable[str]) -> str:
    """The design that built tensors ``names`` of a run described as ``aux``: ``scaled``
    tensors with a bridge gain are contsup 0.2's, ``scaled-0.2``.

    Example::

        >>> design_of("scaled", ["network.bridges.0.gain"]), design_of("scaled", ["stem.gain"])
        ('scaled-0.2', 'scaled')
    """
    if aux == "scaled" and any(_LEGACY_GAIN.search(name) for name in names):
        return LEGACY.name
    return aux
