"""The default aux design: the paper's bridges where they are cheap, thin ones where not.

The paper's bridges run their encoders at full resolution and add their
BatchNorm-ed output to every channel of the boundary. Built with PyTorch's
default init (not the reference's larger He init, under which their convs
learn slower behind BatchNorm), they carry context's benefit on the learning
benchmark (docs/context.md). At 224 px the paper's ``E`` encoder alone saves
more for backward than the segment it serves, so each bridge here is chosen by
what the paper's would save, per image:

* **the paper's bridge** (``contsup.auxiliary.paper``, PyTorch's default init)
  where it saves at most ``RICH_LIMIT`` values per image for backward (1 MiB in
  float32): every bridge of a network on 32 px images;
* **``scaled``'s thin bridge** elsewhere: a 16-channel band, one patchify conv
  for ``E``, a 1x1 conv on half the grid for ``Rn``. At 224 px every bridge
  that reads the image is thin, and so the 224 px memory goals hold as before.

Heads and decoders are ``scaled``'s: they were the better heads in every
comparison (docs/context.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from contsup.auxiliary import paper
from contsup.auxiliary.design import AuxDesign, register_design
from contsup.auxiliary.scaled import FusedBridge, ReconstructionDecoder, build_head
from contsup.geometry import Geometry

__all__ = ["DESIGN", "RICH_LIMIT", "build_bridge", "paper_saved_values"]

RICH_LIMIT = 2**18  # values the paper's bridge may save for backward, per image


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


def build_bridge(
    target: Geometry, sources: Sequence[Geometry], image: Geometry | None
) -> nn.Module:
    """The paper's bridge if it saves at most ``RICH_LIMIT`` values per image, else the thin one.

    Example::

        bridge = build_bridge(Geometry("NCHW", 64, 8, 8), [previous], image)  # the paper's at 32 px
    """
    if paper_saved_values(target, sources, image) <= RICH_LIMIT:
        return paper.build_bridge(target, list(sources), image, init=None)
    return FusedBridge(target, sources, image)


DESIGN = register_design(AuxDesign("sized", build_bridge, build_head, ReconstructionDecoder))
