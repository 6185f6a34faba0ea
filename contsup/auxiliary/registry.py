"""The aux design registry: ``AuxDesign``, ``register_design``, ``get_design``, ``AuxConfig``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from contsup.context import ContextMode
from contsup.errors import ConfigError, ContsupError
from contsup.geometry import Geometry

__all__ = [
    "AuxDesign",
    "AuxConfig",
    "BoundaryTooNarrowError",
    "aux_designs",
    "get_design",
    "register_design",
]


class BoundaryTooNarrowError(ContsupError):
    """A boundary has fewer channels than the context sources its bridge must take."""


@dataclass(frozen=True)
class AuxDesign:
    """The builders of one design; each takes geometries and returns an ``nn.Module``.

    ``bridge(target, sources, image)`` adds context to a boundary of ``target``
    from earlier boundaries of ``sources`` and, unless ``image`` is None, the raw
    image (called as ``bridge(h, [c_1, ...], x)``, see ``contsup.bridges``);
    ``head(config, geometry, out_features, width)`` scores a boundary;
    ``decoder(geometry, image)`` reconstructs the image from a boundary.
    """

    name: str
    bridge: Callable[[Geometry, Sequence[Geometry], Geometry | None], nn.Module]
    head: Callable[[str, Geometry, int, int], nn.Module]
    decoder: Callable[[Geometry, Geometry], nn.Module]


_REGISTERED: dict[str, AuxDesign] = {}


def register_design(design: AuxDesign) -> AuxDesign:
    """Make ``design`` available by its name to ``wrap(aux=...)``, ``--aux`` and recipes.

    Example::

        register_design(AuxDesign("mine", my_bridge, my_head, scaled.ReconstructionDecoder))
        contsup.wrap(model, k=4, aux="mine")
    """
    _REGISTERED[design.name] = design
    return design


def aux_designs() -> list[str]:
    """The names ``aux=`` takes, sorted (registration order follows import order).

    Example::

        >>> aux_designs()[:2]
        ['paper', 'scaled']
    """
    return sorted(_REGISTERED)


def get_design(name: str) -> AuxDesign:
    """The design called ``name``; a ``ConfigError`` in one sentence for an unknown name.

    Example::

        >>> get_design("paper").name
        'paper'
    """
    if name not in _REGISTERED:
        raise ConfigError(
            f"unknown aux design {name!r}; use 'scaled' (the default, small at any input "
            f"size), 'paper' (the reference implementation's modules) or one of {aux_designs()}"
        )
    return _REGISTERED[name]


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
