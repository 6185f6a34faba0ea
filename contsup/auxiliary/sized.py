"""The default aux design: the paper's modules where they are cheap, thin ones where not.

The paper's modules, built with PyTorch's default init (not the reference's
larger He init, under which their convs learn slower behind BatchNorm), carry
context supply's benefit on the learning benchmark: with them R1E gains about
two points over plain greedy learning, with the thin ones about half a point
(docs/context.md). But at 224 px the paper's ``E`` encoder alone saves more for
backward than the segment it serves, and its heads, as wide as the network,
cost more than the backbone. So each module is chosen by what the paper's
would cost, per image:

* **the paper's bridge** where it saves at most ``RICH_LIMIT`` values for
  backward (1 MiB in float32) and its ``Rn`` encoders' 1x1 convs, which run at
  each source's resolution and the boundary's full width, cost at most
  ``RECENT_LIMIT`` multiply-adds (four times an ``R1`` bridge's most on the
  CIFAR ResNets): every bridge of a network on 32 px images. Without the second rule
  an ``R1`` bridge at a late 224 px boundary (EfficientNet-B0's 672 channels at
  14x14 into 192) was the paper's and cost 6.5% of the backbone's FLOPs alone;
* **the paper's head** on feature maps where its convs cost at most
  ``HEAD_LIMIT`` multiply-adds (about twice the most they cost on the CIFAR
  ResNets): every head of a CIFAR ResNet;
* **``scaled``'s thin bridge and head** elsewhere: at 224 px every bridge that
  reads the image and every head, so the 224 px memory goals hold as with
  ``scaled``.

Decoders are ``scaled``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from contsup.auxiliary import paper, scaled
from contsup.auxiliary.design import AuxDesign, register_design
from contsup.auxiliary.scaled import FusedBridge, ReconstructionDecoder
from contsup.geometry import Geometry

__all__ = [
    "DESIGN",
    "HEAD_LIMIT",
    "RECENT_LIMIT",
    "RICH_LIMIT",
    "build_bridge",
    "build_head",
    "paper_head_macs",
    "paper_recent_macs",
    "paper_saved_values",
]

RICH_LIMIT = 2**18  # values the paper's bridge may save for backward, per image
HEAD_LIMIT = 2**22  # multiply-adds the paper's head convs may cost per image
RECENT_LIMIT = 2**21  # multiply-adds the paper's Rn encoders may cost per image


def paper_saved_values(target: Geometry, sources: Sequence[Geometry], image: Geometry | None):
    """Values per image that the paper's bridge at ``target`` saves for backward.

    Example::

        >>> paper_saved_values(Geometry("NCHW", 64, 8, 8), [Geometry("NCHW", 64, 8, 8)], None)
        12288

    Each encoder keeps its first conv's input, and per conv the conv's and the
    BatchNorm-ReLU's outputs, at its input's resolution (the paper pools last).
    """
    values = sum(
        (source.channels + 2 * target.channels) * source.height * source.width for source in sources
    )
    if image is not None:
        per_pixel = image.channels + 2 * paper.IMAGE_HIDDEN + 2 * target.channels
        values += per_pixel * image.height * image.width
    return values


def paper_recent_macs(target: Geometry, sources: Sequence[Geometry]) -> int:
    """Multiply-adds per image of the paper's ``Rn`` encoders at ``target``: a 1x1 conv
    from each source's channels to the boundary's, at the source's resolution.

    Example::

        >>> paper_recent_macs(Geometry("NCHW", 64, 8, 8), [Geometry("NCHW", 32, 16, 16)])
        524288
    """
    return sum(s.channels * target.channels * s.height * s.width for s in sources)


def build_bridge(
    target: Geometry, sources: Sequence[Geometry], image: Geometry | None
) -> nn.Module:
    """The paper's bridge if it saves at most ``RICH_LIMIT`` values per image and its
    ``Rn`` encoders cost at most ``RECENT_LIMIT`` multiply-adds, else the thin one.

    Example::

        bridge = build_bridge(Geometry("NCHW", 64, 8, 8), [previous], image)  # the paper's at 32 px
    """
    cheap = paper_recent_macs(target, sources) <= RECENT_LIMIT
    if cheap and paper_saved_values(target, sources, image) <= RICH_LIMIT:
        return paper.build_bridge(target, list(sources), image, init=None)
    return FusedBridge(target, sources, image)


def paper_head_macs(config: str, geometry: Geometry, width: int) -> int:
    """Multiply-adds per image of the convs of the paper's head ``config`` at ``geometry``.

    Example::

        >>> paper_head_macs("1c2f", Geometry("NCHW", 16, 32, 32), width=64)  # 16->32, stride 2
        1179648

    The convs are ``paper.head_convs``: 3x3 with padding 1, so stride s makes a grid of
    ceil(H / s) x ceil(W / s).
    """
    height, width_px, macs = geometry.height, geometry.width, 0
    for cin, out, stride in paper.head_convs(config, geometry, width):
        height, width_px = -(-height // stride), -(-width_px // stride)
        macs += height * width_px * 9 * cin * out
    return macs


def build_head(config: str, geometry: Geometry, out_features: int, width: int) -> nn.Module:
    """The paper's head on a feature map if its convs cost at most ``HEAD_LIMIT``, else scaled's.

    Example::

        head = build_head("1c2f", Geometry("NCHW", 16, 32, 32), 10, width=64)  # the paper's
    """
    if geometry.layout == "NCHW" and paper_head_macs(config, geometry, width) <= HEAD_LIMIT:
        return paper.build_head(config, geometry, out_features, width, init=None)
    return scaled.build_head(config, geometry, out_features, width)


DESIGN = register_design(AuxDesign("sized", build_bridge, build_head, ReconstructionDecoder))
