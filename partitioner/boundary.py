"""What crosses a cut: the boundary tensors' names, shapes, dtypes and layouts."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["TensorSpec", "Boundary", "infer_layout"]


@dataclass(frozen=True)
class TensorSpec:
    """One boundary tensor: graph node name, shape (batch first), dtype, layout."""

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


_CHANNELS_FIRST_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)
_CHANNELS_FIRST_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.batch_norm, F.group_norm}
_CHANNELS_LAST_FUNCTIONS = {F.linear, F.layer_norm}


def _channel_count(gm: fx.GraphModule, n: fx.Node) -> tuple[str, int] | None:
    """('first', C) or ('last', C) when ``n`` is an op that fixes its input's channel axis."""
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if isinstance(m, _CHANNELS_FIRST_MODULES):
            return "first", getattr(m, "in_channels", None) or m.num_features
        if isinstance(m, nn.Linear):
            return "last", m.in_features
        if isinstance(m, nn.LayerNorm):
            return "last", m.normalized_shape[-1]
    if n.op == "call_function" and n.target in _CHANNELS_FIRST_FUNCTIONS:
        return "first", -1
    if n.op == "call_function" and n.target in _CHANNELS_LAST_FUNCTIONS:
        return "last", -1
    return None


def infer_layout(gm: fx.GraphModule, node: fx.Node, value: Any, default_4d: str = "NCHW") -> str:
    """Name the layout of a boundary tensor from the ops around it in the graph.

    Example::

        infer_layout(gm, node, torch.empty(1, 56, 56, 96))  # 'NHWC' for a Swin stage

    3-D tensors are token sequences ("NLC"), 2-D ones "NC". For 4-D tensors the
    nearest ops that fix a channel axis (convolutions and batch norms read dim 1;
    linears and layer norms read the last) among the tensor's consumers, up to
    three ops downstream, decide between NCHW and NHWC; ``default_4d`` (timm's ``output_fmt``)
    decides when nothing in the graph does.
    """
    if not isinstance(value, torch.Tensor):
        return "other"
    if value.ndim == 2:
        return "NC"
    if value.ndim == 3:
        return "NLC"
    if value.ndim != 4:
        return "other"
    queue, seen = deque([(node, 0)]), {node}
    while queue:
        n, depth = queue.popleft()
        found = None if n is node else _channel_count(gm, n)
        if found is not None:
            axis, channels = found
            if axis == "first" and channels in (-1, value.shape[1]):
                return "NCHW"
            if axis == "last" and channels in (-1, value.shape[-1]):
                return "NHWC"
        if depth < 3:
            for user in n.users:
                if user not in seen:
                    seen.add(user)
                    queue.append((user, depth + 1))
    return default_4d
