"""Ops on whole windows of a map that save nothing for backward and write each
value once: how thin heads pool a boundary and how thin bridges add context to it.

The plain ops they replace cost more than the convs around them on a CPU: at
mobilenetv3_large_100's K=16 boundaries (224 px, batch 32) the heads' pooling as
a reshape and a mean, its backward and the bridges' nearest upsampling, sum and
concatenation took 0.55 s of a 3.8 s step (R1E), their convs 0.06 s. Here the forward
pooling is ``avg_pool2d`` (twice as fast as a mean over strided dimensions), its
backward divides the small gradient before spreading it, and context is added to
a copy of the boundary without an upsampled copy of the context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["add_to_band", "window_mean"]


def _channels_last(t: torch.Tensor) -> bool:
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def _spread(small: torch.Tensor, window: tuple[int, int], channels_last: bool) -> torch.Tensor:
    """Each value of ``small`` (N, C, h, w) repeated over its window: (N, C, h*r, w*c),
    channels-last in memory or contiguous."""
    rows, cols = window
    n, c, h, w = small.shape
    if channels_last:
        nhwc = small.permute(0, 2, 3, 1)[:, :, None, :, None, :]
        full = nhwc.expand(n, h, rows, w, cols, c).reshape(n, h * rows, w * cols, c)
        return full.permute(0, 3, 1, 2)
    full = small[:, :, :, None, :, None].expand(n, c, h, rows, w, cols)
    return full.reshape(n, c, h * rows, w * cols)


class _WindowMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        ctx.window, ctx.channels_last = window, _channels_last(h)
        return F.avg_pool2d(h, window)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, cols = ctx.window
        return _spread(grad / (rows * cols), ctx.window, ctx.channels_last), None


def window_mean(h: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The mean of each whole ``window`` of an (N, C, H, W) map; saves nothing for backward.

    Example::

        window_mean(torch.randn(2, 40, 28, 28), (4, 4)).shape  # (2, 40, 7, 7)

    The values of ``avg_pool2d`` (H and W must be multiples of the window) without
    what its autograd node keeps: the input, a boundary-sized tensor the segment
    itself may not keep.
    """
    return _WindowMean.apply(h, tuple(window))


class _AddToBand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        n, width, rows, cols = context.shape
        window = (h.shape[2] // rows, h.shape[3] // cols)
        out = torch.empty_like(h, dtype=dtype).copy_(h)
        band = out[:, :width].view(n, width, rows, window[0], cols, window[1])
        band.add_(context[:, :, :, None, :, None])
        ctx.window, ctx.width, ctx.dtypes = window, width, (h.dtype, context.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h_dtype, context_dtype = ctx.dtypes
        grad_h = grad.to(h_dtype) if ctx.needs_input_grad[0] else None
        band = grad[:, : ctx.width]
        grad_context = F.avg_pool2d(band, ctx.window, divisor_override=1).to(context_dtype)
        return grad_h, grad_context, None


def add_to_band(h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``h`` with ``context`` nearest-upsampled to its grid and added to its first channels.

    Example::

        h2 = add_to_band(torch.randn(2, 64, 16, 16), torch.randn(2, 16, 8, 8))

    The same values as ``torch.cat([h[:, :16] + upsample(context), h[:, 16:]], 1)``
    when h's grid is a whole multiple of the context's, with one copy of ``h``
    instead of an upsampled context, a sum and a concatenation. Saves nothing.
    """
    rows, cols = context.shape[2:]
    if h.shape[2] % rows or h.shape[3] % cols:
        raise ValueError(f"a {tuple(h.shape[2:])} grid is no whole multiple of {(rows, cols)}")
    # The dtype a sum would give, found here: torch.compile cannot trace a dtype-valued
    # op inside an autograd.Function.
    return _AddToBand.apply(h, context, torch.promote_types(h.dtype, context.dtype))
