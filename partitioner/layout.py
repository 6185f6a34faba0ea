"""Memory layouts: which axis of each tensor in a graph is the batch, channels or space.

A layout is derived from the graph, never guessed. The input is channels-first
(NCHW), as PyTorch vision models take it, and every op hands its operands' axes
on by one of a few rules:

* Ops that leave axes in place keep them: elementwise ops, activations, dropout,
  norms, pooling, padding, ``Linear`` on the last axis. A convolution makes
  axis 1 its channels. With several operands each axis takes the role they
  agree on; a parameter, or an operand whose axes are unknown (an attention
  branch, a drop-path mask), leaves it be, and operands that disagree make it
  unknown.
* ``permute`` and ``transpose`` move axes; ``view``, ``reshape``, ``flatten`` and
  ``squeeze`` regroup them by size: space splits and merges into space,
  channels split into heads and merge back, space folded into channels is
  channels, and anything folded into the batch is unknown.
* A matrix product takes its rows from the left operand and its columns from
  the right one (attention); indexing keeps, drops or inserts axes; reductions
  drop axes or keep them at size 1.
* Any other op makes every axis unknown: a function fx could not trace, or an
  opaque leaf module other than the timm ones listed in ``_KEEP_LEAVES``.

A tensor whose axes are all known gets its layout's name (``NCHW``, ``NHWC``,
``NLC``, ``NCL``, ``NC``, or ``other``); one with an unknown axis is ``unknown``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from partitioner.axes import Axes, agreed, broadcast, moved, regroup

__all__ = ["UNKNOWN", "tensor_layouts"]

UNKNOWN = "unknown"

_NAMES = {
    ("N", "C", "S", "S"): "NCHW",
    ("N", "S", "S", "C"): "NHWC",
    ("N", "S", "C"): "NLC",
    ("N", "C", "S"): "NCL",
    ("N", "C"): "NC",
}


def _classes_in(*modules: Any, excluding: tuple[type, ...] = ()) -> tuple[type, ...]:
    return tuple(
        cls
        for module in modules
        for cls in vars(module).values()
        if isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and cls.__module__ == module.__name__
        and cls not in excluding
    )


_KEEP_MODULES = (
    nn.Identity,
    nn.Linear,
    *_classes_in(
        nn.modules.activation,
        nn.modules.batchnorm,
        nn.modules.channelshuffle,
        nn.modules.dropout,
        nn.modules.instancenorm,
        nn.modules.normalization,
        nn.modules.padding,
        nn.modules.pixelshuffle,
        nn.modules.pooling,
        nn.modules.upsampling,
        excluding=(nn.MultiheadAttention,),
    ),
)
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten)

# timm's opaque (notrace) modules that return their input's axes, read from their
# source: blocks and attentions that end as they began (NCHW, NHWC or NLC).
_KEEP_LEAVES = {
    "timm.layers.cond_conv2d.CondConv2d",
    "timm.layers.inplace_abn.InplaceAbn",
    "timm.layers.non_local_attn.BilinearAttnTransform",
    "timm.layers.norm_act.FrozenBatchNormAct2d",
    "timm.models.convit.GPSA",
    "timm.models.cpubone.ConvAttention",
    "timm.models.efficientvit_mit.LiteMLA",
    "timm.models.efficientvit_msra.LocalWindowAttention",
    "timm.models.lowformer.ConvAttention",
    "timm.models.mobilevit.MobileVitBlock",
    "timm.models.mobilevit.MobileVitV2Block",
    "timm.models.nfnet.NormFreeBlock",
    "timm.models.tiny_vit.TinyVitBlock",
    "timm.models.twins.LocallyGroupedAttn",
    "timm.models.vgg.ConvMlp",
}

_POINTWISE = {
    *("add", "sub", "mul", "div", "truediv", "floordiv", "mod", "pow", "neg", "abs"),
    *("exp", "log", "sqrt", "rsqrt", "reciprocal", "square", "erf", "sin", "cos"),
    *("sigmoid", "tanh", "relu", "relu6", "gelu", "silu", "mish", "softplus"),
    *("hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu", "selu", "celu"),
    *("clamp", "clip", "clamp_min", "clamp_max", "maximum", "minimum", "where"),
    *("masked_fill", "lerp", "addcmul", "addcdiv", "bernoulli", "uniform", "normal"),
    *("contiguous", "clone", "detach", "to", "type", "type_as", "float", "half"),
    *("bfloat16", "double", "requires_grad", "expand", "expand_as", "repeat", "tile"),
    *("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "softmax"),
    *("log_softmax", "normalize", "layer_norm", "rms_norm", "group_norm", "batch_norm"),
    *("instance_norm", "local_response_norm", "linear", "pad", "roll", "flip"),
    *("interpolate", "upsample", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle"),
    *("avg_pool1d", "avg_pool2d", "avg_pool3d", "lp_pool1d", "lp_pool2d"),
    *("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"),
}
_POOL_FUNCTIONS = {  # boolean-dispatched in torch, so their __name__ says nothing
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_CONVOLUTIONS = {
    "conv",
    *(f"conv{d}d" for d in (1, 2, 3)),
    *(f"conv_transpose{d}d" for d in (1, 2, 3)),
}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"}
_RESHAPES |= {"view_as", "reshape_as"}
_MOVES = {"permute", "transpose", "swapaxes", "swapdims", "movedim"}
# Reductions whose arguments are (dim, keepdim); std and var put ``unbiased`` second.
_REDUCTIONS = {"mean", "sum", "amax", "amin", "prod", "logsumexp", "nansum", "nanmean"}


def tensor_layouts(gm: fx.GraphModule, values: dict[str, Any]) -> dict[str, str]:
    """The layout of every tensor ``gm`` computes, by propagation from its input.

    Example::

        gm = trace(model, training=True)
        layouts = tensor_layouts(gm, profile(gm, x).values)
        layouts["stem_0"], layouts["permute"]      # ('NCHW', 'NHWC') for a ConvNeXt

    ``values`` are the nodes' values on an example input (only their shapes are
    read). A tensor computed from parameters alone, not from the input, is ``unknown``.
    """
    axes: dict[str, Any] = {}
    for node in gm.graph.nodes:
        value = values.get(node.name)
        if node.op == "placeholder" and not axes:
            axes[node.name] = _input_axes(value)
        elif node.op.startswith("call_") and _activations(node, axes):
            axes[node.name] = _checked(_derive(gm, node, axes, values), value)
    return {
        name: _name_of(axes.get(name))
        for name, value in values.items()
        if isinstance(value, torch.Tensor)
    }


def _name_of(axes: Axes | None) -> str:
    if axes is None or "?" in axes:
        return UNKNOWN
    # A size-1 axis without a role (from unsqueeze) fills a spatial slot: (N, C, 1, 1).
    return _NAMES.get(tuple("S" if a == "1" else a for a in axes), "other")


def _input_axes(value: Any) -> Axes | None:
    if not isinstance(value, torch.Tensor) or value.ndim < 2:
        return None
    return ("N", "C", *("S" * (value.ndim - 2)))


def _activations(node: fx.Node, axes: dict[str, Any]) -> list[fx.Node]:
    """The inputs of ``node`` computed from the model's input (not parameters, not shapes)."""
    return [n for n in node.all_input_nodes if axes.get(n.name) is not None]


def _checked(result: Any, value: Any) -> Any:
    """``result`` if it fits ``value`` (a tensor's axes, a sequence's), else all unknown."""
    if isinstance(value, torch.Tensor):
        fits = isinstance(result, tuple) and len(result) == value.ndim
        return result if fits else ("?",) * value.ndim
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        fits = isinstance(result, list) and len(result) == len(value)
        return [_checked(r, v) for r, v in zip(result if fits else [None] * len(value), value)]
    return None


def _op_name(gm: fx.GraphModule, node: fx.Node) -> str:
    """What ``node`` does: a torch function's or method's name, or a module's rule."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.modules.conv._ConvNd):
            return "conv"
        if isinstance(module, _RESHAPE_MODULES):
            return "reshape"
        leaf = f"{type(module).__module__}.{type(module).__qualname__}"
        return "keep" if isinstance(module, _KEEP_MODULES) or leaf in _KEEP_LEAVES else ""
    if node.op == "call_function":
        if node.target in _POOL_FUNCTIONS:
            return "keep"
        owner = getattr(node.target, "__module__", None) or ""
        # Only torch's own functions: a user's autowrapped function may share a name.
        if not owner.startswith(("torch", "_operator")):
            return ""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    if name in {"iadd", "isub", "imul", "itruediv", "ifloordiv", "ipow"}:
        name = name[1:]
    return name.removesuffix("_")


def _derive(gm: fx.GraphModule, node: fx.Node, axes: dict[str, Any], values: dict) -> Any:
    name = _op_name(gm, node)
    inputs = _activations(node, axes)
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else inputs[0]
    source = axes.get(first.name)
    if name == "keep":  # a module: what it returns has its input's axes
        return source
    if name in _POINTWISE:
        return _elementwise(node, inputs, axes, values)
    if name in _CONVOLUTIONS and isinstance(source, tuple) and len(source) >= 2:
        return (source[0], "C", *source[2:])
    if name in _RESHAPES:
        return regroup(source, _shape(values, first), _shape(values, node))
    if name in _MOVES:
        return moved(name, source, _int_args(node, values))
    if name in {"matmul", "bmm", "scaled_dot_product_attention"}:
        return _product(name, node, axes, values)
    if name in _REDUCTIONS:
        return _reduced(node, source, values)
    if name in {"cat", "concat", "concatenate"}:
        return agreed([axes[n.name] for n in inputs if isinstance(axes[n.name], tuple)])
    if name in {"chunk", "split", "tensor_split"}:
        return [source] * len(values[node.name])
    if name == "unbind" and isinstance(source, tuple):
        dim = node.kwargs.get("dim", 0) if len(node.args) < 2 else _int_args(node, values)[0]
        dim %= len(source)
        return [source[:dim] + source[dim + 1 :]] * len(values[node.name])
    if name == "getitem":
        return _indexed(source, node.args[1], values)
    return None


def _shape(values: dict, node: fx.Node) -> tuple[int, ...]:
    value = values.get(node.name)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def _arg_value(arg: Any, values: dict) -> Any:
    if isinstance(arg, fx.Node):
        return values.get(arg.name)
    if isinstance(arg, (list, tuple)):
        return type(arg)(_arg_value(a, values) for a in arg)
    return arg


def _int_args(node: fx.Node, values: dict) -> list[int]:
    """The integer arguments after the tensor (``permute(0, 2, 3, 1)`` or ``permute([...])``)."""
    args = [_arg_value(a, values) for a in node.args[1:]]
    args += [
        _arg_value(node.kwargs[k], values)
        for k in ("dims", "dim0", "dim1", "dim")
        if k in node.kwargs
    ]
    flat = [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else (arg,))]
    return [int(a) for a in flat if isinstance(a, int)]


def _elementwise(node: fx.Node, inputs: list[fx.Node], axes: dict, values: dict) -> Axes | None:
    out = _shape(values, node)
    operands = [
        (axes[n.name], _shape(values, n)) for n in inputs if isinstance(axes[n.name], tuple)
    ]
    if len(operands) == 1 and len(operands[0][0]) == len(out):
        return operands[0][0]  # one input: sizes may change (padding, pooling), axes do not
    return broadcast(operands, out)


def _product(name: str, node: fx.Node, axes: dict, values: dict) -> Axes | None:
    """``a @ b``: batch axes as both agree, rows from ``a``, columns from ``b``.

    For attention ``softmax(q @ k.T) @ v`` that gives rows from ``q`` and columns
    from ``v``. A parameter on the right is a linear map of ``a``'s last axis.
    """
    second = 2 if name == "scaled_dot_product_attention" else 1  # v, not k
    a, b = node.args[0], node.args[second] if len(node.args) > second else None
    left, right = (axes.get(n.name) if isinstance(n, fx.Node) else None for n in (a, b))
    if not isinstance(left, tuple) or len(left) < 2:
        return None
    if right is None:
        return left
    if not isinstance(right, tuple) or len(right) < 2:
        return None
    out = _shape(values, node)
    batch = [(left[:-2], _shape(values, a)[:-2]), (right[:-2], _shape(values, b)[:-2])]
    return (*broadcast(batch, out[:-2]), left[-2], right[-1])


def _reduced(node: fx.Node, source: Any, values: dict) -> Axes | None:
    if not isinstance(source, tuple):
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    dim, keepdim = _arg_value(dim, values), _arg_value(keepdim, values)
    if dim is None:
        return source if keepdim else ()
    dims = {d % len(source) for d in (dim if isinstance(dim, (list, tuple)) else (dim,))}
    return source if keepdim else tuple(a for i, a in enumerate(source) if i not in dims)


def _indexed(source: Any, index: Any, values: dict) -> Any:
    """Axes of ``source[index]``: of a tensor, or the element of a sequence."""
    index = _arg_value(index, values)
    if isinstance(source, list):
        return source[index] if isinstance(index, int) else None
    if not isinstance(source, tuple):
        return None
    items = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items):
        return None  # a tensor index gathers: the result's axes are not the source's
    consumed = sum(isinstance(i, (int, slice)) for i in items)
    result: list[str] = []
    axis = 0
    for item in items:
        if item is None:
            result.append("1")
        elif item is Ellipsis:
            skip = len(source) - consumed
            result += source[axis : axis + skip]
            axis += skip
        else:
            if isinstance(item, slice):
                result.append(source[axis])
            axis += 1
    return (*result, *source[axis:])
