"""What crosses a cut: the boundary tensors' names, shapes, dtypes and layouts."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorSpec", "Boundary"]


@dataclass(frozen=True)
class TensorSpec:
    """One boundary tensor: graph node name, shape (batch first), dtype, layout.

    ``layout`` names the axes as the graph derives them (``partitioner.layout``):
    ``NCHW``, ``NHWC``, ``NLC`` (tokens), ``NCL``, ``NC``, ``other`` (known axes
    in another arrangement) or ``unknown`` (the graph does not tell).
    """

    node: str
    shape: tuple[int, ...]
    dtype: str
    layout: str


@dataclass(frozen=True)
class Boundary:
    """The tensors passed from one segment to the next (one, unless several were allowed).

    ``node``, ``shape``, ``dtype`` and ``layout`` describe the single tensor of an
    ordinary boundary; multi-tensor boundaries list theirs in ``tensors``.
    """

    tensors: tuple[TensorSpec, ...]

    def _single(self) -> TensorSpec:
        if len(self.tensors) != 1:
            raise AttributeError(
                f"this boundary carries {len(self.tensors)} tensors; read boundary.tensors"
            )
        return self.tensors[0]

    @property
    def node(self) -> str:
        return self._single().node

    @property
    def shape(self) -> tuple[int, ...]:
        return self._single().shape

    @property
    def dtype(self) -> str:
        return self._single().dtype

    @property
    def layout(self) -> str:
        return self._single().layout
