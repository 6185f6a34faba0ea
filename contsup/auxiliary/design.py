"""What an aux design is, and the registry of designs by name.

Designs (``paper``, ``scaled``, a user's own) register themselves here; this
module imports none of them, so a design module can import it without a circle.
Importing ``contsup.auxiliary`` registers the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from contsup.errors import ConfigError, ContsupError
from contsup.geometry import Geometry

__all__ = [
    "DEFAULT_DESIGN",
    "AuxDesign",
    "BoundaryTooNarrowError",
    "aux_designs",
    "get_design",
    "register_design",
]


DEFAULT_DESIGN = "sized"  # the paper's modules where cheap, thin at 224 px (auxiliary/sized.py)


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
            f"unknown aux design {name!r}; use 'sized' (the default: the paper's modules where "
            f"they are cheap, thin ones at 224 px), 'scaled' (always thin), 'paper' (the reference "
            f"implementation's modules) or one of {aux_designs()}"
        )
    return _REGISTERED[name]
