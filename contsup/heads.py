"""Local heads ``<a>c<b>f`` (a conv layers, then b linear layers) and the decoder.

* ``0c1f``: GAP -> Linear(C -> out)
* ``0c2f``: GAP -> Linear(C -> 128) -> ReLU -> Linear(128 -> out)
* ``1c1f``: Conv3x3 -> BN -> ReLU -> GAP -> Linear(-> out)
* ``1c2f``: Conv3x3 -> BN -> ReLU -> GAP -> Linear(-> 128) -> ReLU -> Linear(128 -> out)
* ``1c3f``, ``2c2f``, ...: more linear or conv layers in the same pattern.

The first conv doubles the channels, with stride 2, until it reaches the
network's width; then it keeps them at stride 1. On the CIFAR ResNets that is
the paper's 16->32 s2, 32->64 s2, 64->64 s1.
"""

from __future__ import annotations

import re

from torch import nn

from contsup.geometry import Geometry, ToMap

__all__ = ["HEADS", "parse_head", "build_head", "ReconstructionDecoder"]

HEADS = ("0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f")
HIDDEN = 128


def parse_head(config: str) -> tuple[int, int]:
    """``"1c2f"`` -> (1, 2): numbers of conv and linear layers.

    Example::

        >>> parse_head("2c2f")
        (2, 2)
    """
    match = re.fullmatch(r"(\d)c(\d)f", config) if isinstance(config, str) else None
    if match is None or int(match.group(2)) < 1:
        raise ValueError(
            f"unknown head {config!r}; use <a>c<b>f with a conv layers and b >= 1 linear "
            f"layers, e.g. {', '.join(HEADS)}"
        )
    return int(match.group(1)), int(match.group(2))


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def build_head(config: str, geometry: Geometry, out_features: int, width: int) -> nn.Sequential:
    """A local head for a boundary of ``geometry``.

    Example::

        head = build_head("1c2f", Geometry("NCHW", 16, 32, 32), out_features=10, width=64)

    ``width`` caps the conv layers' channels (the network's final width).
    """
    convs, linears = parse_head(config)
    layers: list[nn.Module] = [ToMap(geometry)]
    channels, size = geometry.channels, min(geometry.height, geometry.width)
    for i in range(convs):
        out = min(2 * channels, max(width, channels)) if i == 0 else channels
        stride = 2 if out > channels and size > 1 else 1
        layers += _conv_bn_relu(channels, out, stride)
        channels, size = out, (size + 1) // stride
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    features = channels
    for _ in range(linears - 1):
        layers += [nn.Linear(features, HIDDEN), nn.ReLU(inplace=True)]
        features = HIDDEN
    layers.append(nn.Linear(features, out_features))
    return nn.Sequential(*layers)


class ReconstructionDecoder(nn.Sequential):
    """InfoPro-style decoder: boundary -> image in [0, 1] (bilinear up, two convs, sigmoid)."""

    def __init__(self, geometry: Geometry, image: Geometry, hidden: int = 12):
        super().__init__(
            ToMap(geometry),
            nn.Upsample(size=(image.height, image.width), mode="bilinear", align_corners=False),
            nn.Conv2d(geometry.channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, image.channels, 3, padding=1),
            nn.Sigmoid(),
        )
