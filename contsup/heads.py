"""Local head configurations ``<a>c<b>f``: a conv layers, then b linear layers.

Each aux design (``contsup.auxiliary``) decides what a conv layer is at a given
boundary; the names and the linear part are shared:

* ``0c1f``: GAP -> Linear(C -> out)
* ``0c2f``: GAP -> Linear(C -> 128) -> ReLU -> Linear(128 -> out)
* ``1c2f``: one conv layer, GAP, Linear(-> 128) -> ReLU -> Linear(128 -> out)
* ``1c1f``, ``1c3f``, ``2c2f``, ...: more linear or conv layers in the same pattern.
"""

from __future__ import annotations

import re

from torch import nn

from contsup.errors import ConfigError

__all__ = ["HEADS", "HIDDEN", "parse_head", "linear_layers"]

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
        raise ConfigError(
            f"unknown head {config!r}; use <a>c<b>f with a conv layers and b >= 1 linear "
            f"layers, e.g. {', '.join(HEADS)}"
        )
    return int(match.group(1)), int(match.group(2))


def linear_layers(features: int, count: int, out_features: int) -> list[nn.Module]:
    """``count`` linear layers from ``features`` to ``out_features``, 128 wide between.

    Example::

        >>> [type(m).__name__ for m in linear_layers(64, 2, 10)]
        ['Linear', 'ReLU', 'Linear']
    """
    layers: list[nn.Module] = []
    for _ in range(count - 1):
        layers += [nn.Linear(features, HIDDEN), nn.ReLU(inplace=True)]
        features = HIDDEN
    layers.append(nn.Linear(features, out_features))
    return layers
