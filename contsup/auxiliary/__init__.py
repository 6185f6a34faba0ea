"""Aux designs: how local heads, context encoders and decoders are built.

A design turns a boundary's ``Geometry`` into modules; the learner does the rest
(which boundaries feed which, and what is detached). Two designs:

* ``paper``: the reference implementation's modules, exactly (docs/paper.md).
  Built for 32 px CIFAR: full-resolution encoders and heads as wide as the network.
* ``scaled``: the default. Pools to the boundary's grid before anything learned
  runs, keeps widths small and fixed, and uses LayerNorm + token mean on token
  layouts, so heads and bridges stay a small fraction of the backbone at 224 px.

Example::

    design = get_design("scaled")
    head = design.head("1c2f", Geometry("NCHW", 256, 56, 56), out_features=10, width=2048)
"""

from contsup.auxiliary import paper, scaled  # the built-in designs register on import
from contsup.auxiliary.registry import (
    AuxConfig,
    AuxDesign,
    BoundaryTooNarrowError,
    aux_designs,
    get_design,
    register_design,
)

__all__ = [
    "AuxDesign",
    "AuxConfig",
    "BoundaryTooNarrowError",
    "aux_designs",
    "get_design",
    "paper",
    "register_design",
    "scaled",
]
