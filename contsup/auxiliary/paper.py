"""The paper's aux modules, as the reference implementation defines them (docs/paper.md).

Context encoders, for feature maps:

* image (``E``): Conv3x3(3->12, bias) -> BN -> ReLU -> Conv3x3(12->C, bias) -> BN ->
  ReLU -> AdaptiveAvgPool2d(H x W), on the full-resolution image;
* earlier boundary (``Rn``): Conv1x1(C_in->C, bias) -> BN -> ReLU -> AdaptiveAvgPool2d(H x W).

Heads: the first conv doubles the channels, with stride 2, until it reaches the
network's width; then it keeps them at stride 1. On the CIFAR ResNets that is
the paper's 16->32 s2, 32->64 s2, 64->64 s1.

Decoder (InfoPro-style): bilinear up to the image (``align_corners=True``),
Conv3x3(C->12, bias) -> BN -> ReLU -> Conv3x3(12->3) -> Sigmoid.

Init, as the reference: every Conv2d normal(0, sqrt(2 / (k * k * out_channels))),
BatchNorm weight 1 and bias 0, Linear PyTorch's default. The builders take
``init=None`` for PyTorch's default init instead (the ``sized`` design's choice:
on short runs the reference's larger conv weights, behind BatchNorm, learn
slower; docs/context.md).

Other layouts pass through ``ToMap``/``FromMap``. Built for 32 px inputs: at
224 px these modules cost more than the backbone (see ``contsup.auxiliary.scaled``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from contsup.auxiliary.design import AuxDesign, register_design
from contsup.bridges import Bridge
from contsup.geometry import FromMap, Geometry, ToMap, pool_to
from contsup.heads import linear_layers, parse_head
from contsup.models.cifar_resnet import paper_init

__all__ = [
    "DESIGN",
    "ImageEncoder",
    "BoundaryEncoder",
    "build_bridge",
    "build_head",
    "head_convs",
    "ReconstructionDecoder",
]


IMAGE_HIDDEN = 12  # the E encoder's hidden channels

Init = Callable[[nn.Module], nn.Module] | None  # None: PyTorch's default init


def _initialised(module: nn.Module, init: Init) -> nn.Module:
    return module if init is None else init(module)


class ImageEncoder(nn.Sequential):
    """The ``E`` encoder: raw image -> a tensor shaped like the boundary."""

    def __init__(
        self, image: Geometry, target: Geometry, hidden: int = IMAGE_HIDDEN, init: Init = paper_init
    ):
        super().__init__(
            nn.Conv2d(image.channels, hidden, 3, padding=1, bias=True),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, target.channels, 3, padding=1, bias=True),
            nn.BatchNorm2d(target.channels),
            nn.ReLU(inplace=True),
            pool_to(image, target),
            FromMap(target),
        )
        _initialised(self, init)


class BoundaryEncoder(nn.Sequential):
    """The ``Rn`` encoder: an earlier boundary input -> a tensor shaped like this boundary."""

    def __init__(self, source: Geometry, target: Geometry, init: Init = paper_init):
        super().__init__(
            ToMap(source),
            nn.Conv2d(source.channels, target.channels, 1, bias=True),
            nn.BatchNorm2d(target.channels),
            nn.ReLU(inplace=True),
            pool_to(source, target),
            FromMap(target),
        )
        _initialised(self, init)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def head_convs(config: str, geometry: Geometry, width: int) -> list[tuple[int, int, int]]:
    """``(in, out, stride)`` of each 3x3 conv of the paper's head ``config`` at ``geometry``.

    Example::

        >>> head_convs("2c2f", Geometry("NCHW", 16, 32, 32), width=64)
        [(16, 32, 2), (32, 32, 1)]

    The first conv doubles the channels, with stride 2, until the network's ``width``;
    later ones keep them at stride 1.
    """
    convs, _ = parse_head(config)
    channels, size = geometry.channels, min(geometry.height, geometry.width)
    layers = []
    for i in range(convs):
        out = min(2 * channels, max(width, channels)) if i == 0 else channels
        stride = 2 if out > channels and size > 1 else 1
        layers.append((channels, out, stride))
        channels = out
    return layers


def build_head(
    config: str, geometry: Geometry, out_features: int, width: int, init: Init = paper_init
) -> nn.Sequential:
    """The paper's local head for a boundary of ``geometry``.

    Example::

        head = build_head("1c2f", Geometry("NCHW", 16, 32, 32), out_features=10, width=64)

    ``width`` caps the conv layers' channels (the network's final width).
    """
    _, linears = parse_head(config)
    layers: list[nn.Module] = [ToMap(geometry)]
    channels = geometry.channels
    for cin, channels, stride in head_convs(config, geometry, width):
        layers += _conv_bn_relu(cin, channels, stride)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    head = nn.Sequential(*layers, *linear_layers(channels, linears, out_features))
    return _initialised(head, init)


class ReconstructionDecoder(nn.Sequential):
    """InfoPro-style decoder: boundary -> image in [0, 1] (bilinear up, two convs, sigmoid)."""

    def __init__(self, geometry: Geometry, image: Geometry, hidden: int = 12):
        super().__init__(
            ToMap(geometry),
            nn.Upsample(size=(image.height, image.width), mode="bilinear", align_corners=True),
            nn.Conv2d(geometry.channels, hidden, 3, padding=1, bias=True),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, image.channels, 3, padding=1),
            nn.Sigmoid(),
        )
        paper_init(self)


def build_bridge(
    target: Geometry, sources: list[Geometry], image: Geometry | None, init: Init = paper_init
) -> Bridge:
    """One ``Rn`` encoder per earlier boundary, plus ``E`` when ``image`` is given, summed.

    Example::

        bridge = build_bridge(Geometry("NCHW", 32, 16, 16), [previous], image)
    """
    recent = [BoundaryEncoder(g, target, init) for g in sources]
    encoder = ImageEncoder(image, target, init=init) if image is not None else None
    return Bridge(recent, encoder)


DESIGN = register_design(AuxDesign("paper", build_bridge, build_head, ReconstructionDecoder))
