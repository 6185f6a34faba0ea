"""Aux designs: how local heads, context encoders and decoders are built.

A design turns a boundary's ``Geometry`` into modules; the learner does the rest
(which boundaries feed which, and what is detached). Three designs:

* ``paper``: the reference implementation's modules, exactly (docs/paper.md).
  Built for 32 px CIFAR: full-resolution encoders and heads as wide as the network.
* ``scaled``: thin. Pools to the boundary's grid before anything learned runs,
  keeps widths small and fixed, and uses LayerNorm + token mean on token
  layouts, so heads and bridges stay a small fraction of the backbone at 224 px.
* ``sized``: the default. The paper's modules at PyTorch's default init where
  they cost little (every head and bridge at 32 px), ``scaled``'s thin ones
  where they would not (at 224 px, every head and every bridge that reads the
  image).

Example::

    design = get_design("sized")
    head = design.head("1c2f", Geometry("NCHW", 256, 56, 56), out_features=10, width=2048)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contsup.auxiliary import paper, scaled, sized  # the built-in designs register on import
from contsup.auxiliary.design import (
    DEFAULT_DESIGN,
    AuxDesign,
    BoundaryTooNarrowError,
    aux_designs,
    get_design,
    register_design,
)
from contsup.context import ContextMode, parse_context
from contsup.errors import ConfigError
from contsup.geometry import Geometry, image_geometry
from contsup.heads import parse_head
from contsup.losses import head_outputs

__all__ = [
    "DEFAULT_DESIGN",
    "AuxDesign",
    "AuxConfig",
    "BoundaryTooNarrowError",
    "aux_config",
    "aux_designs",
    "get_design",
    "paper",
    "register_design",
    "scaled",
    "sized",
]


@dataclass(frozen=True)
class AuxConfig:
    """Everything that decides the aux modules at a boundary, but the boundary itself.

    Example::

        config = AuxConfig("scaled", parse_context("R1E"), "1c2f", 10, 64, image)
        head, decoder, bridge = config.modules_at(target, sources=[previous])
    """

    design: str
    mode: ContextMode
    head: str
    out_features: int
    width: int  # the network's final width (the paper's heads widen up to it)
    image: Geometry
    decoder: bool = False

    def modules_at(
        self, target: Geometry, sources: Sequence[Geometry]
    ) -> tuple[nn.Module, nn.Module | None, nn.Module]:
        """(head, decoder or None, bridge) for a boundary of ``target`` reading ``sources``."""
        design = get_design(self.design)
        head = design.head(self.head, target, self.out_features, self.width)
        decoder = design.decoder(target, self.image) if self.decoder else None
        bridge = design.bridge(target, sources, self.image if self.mode.image else None)
        return head, decoder, bridge


def aux_config(
    model: nn.Module,
    x: torch.Tensor,
    *,
    context: str = "E",
    aux: str = DEFAULT_DESIGN,
    head: str = "1c2f",
    local_loss: str = "ce",
    num_classes: int | None = None,
    decoder: bool = False,
) -> AuxConfig:
    """What ``wrap`` builds its heads and bridges from, checked; a ``ConfigError`` if not valid.

    Example::

        config = aux_config(model, torch.zeros(2, 3, 224, 224), context="R1E")
        head, decoder, bridge = config.modules_at(target, sources=[previous])
    """
    mode = parse_context(context)
    get_design(aux)
    parse_head(head)
    head_outputs(local_loss, 1)  # an unknown loss is reported before a missing class count
    classes = num_classes or getattr(model, "num_classes", None)
    if not classes:
        raise ConfigError("pass num_classes: the model has no num_classes attribute")
    out_features = head_outputs(local_loss, classes)
    width = getattr(model, "num_features", 0) or 0
    return AuxConfig(aux, mode, head, out_features, width, image_geometry(x), decoder)
