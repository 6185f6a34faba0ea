"""Whole-window ops: the values of the plain ops they replace, their gradients, the
memory format kept, and nothing saved for backward."""

import pytest
import torch
import torch.nn.functional as F

from contsup.auxiliary import get_design, scaled
from contsup.auxiliary.windows import add_to_band, window_mean
from contsup.geometry import Geometry
from contsup.memory import SavedTensorTracker


def _map(*shape, channels_last=False):
    t = torch.randn(*shape, dtype=torch.float64)
    t = t.to(memory_format=torch.channels_last) if channels_last else t
    return t.requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True])
def test_window_mean_is_the_mean_of_each_window(channels_last):
    h = _map(2, 6, 12, 12, channels_last=channels_last)
    pooled = window_mean(h, (3, 4))
    assert torch.allclose(pooled, h.reshape(2, 6, 4, 3, 3, 4).mean((3, 5)))
    assert torch.autograd.gradcheck(lambda t: window_mean(t, (3, 4)), (h,))
    (grad,) = torch.autograd.grad(pooled.sum(), h)
    assert grad.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("channels_last", [False, True])
def test_add_to_band_adds_the_upsampled_context_to_the_first_channels(channels_last):
    h, context = _map(2, 8, 12, 12, channels_last=channels_last), _map(2, 3, 4, 6)
    out = add_to_band(h, context)
    up = F.interpolate(context, size=(12, 12), mode="nearest")
    assert torch.equal(out, torch.cat([h[:, :3] + up, h[:, 3:]], 1))
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.autograd.gradcheck(add_to_band, (h, context))
    with pytest.raises(ValueError, match="no whole multiple"):
        add_to_band(h, _map(2, 3, 5, 6))


def test_add_to_band_promotes_as_a_sum_does():
    h = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)
    context = torch.randn(2, 2, 2, 2, requires_grad=True)
    out = add_to_band(h, context)
    assert out.dtype == torch.float32 and torch.equal(h, h.clone())  # h itself is untouched
    out.sum().backward()
    assert context.grad.dtype == torch.float32 and torch.all(context.grad == 4)


def test_neither_saves_its_input():
    h, context = _map(4, 24, 56, 56), _map(4, 16, 14, 14)
    for op, args in ((window_mean, (h, (7, 7))), (add_to_band, (h, context))):
        with SavedTensorTracker([]) as tracker:
            op(*args).sum()
        assert tracker.peak_bytes == 0, op


@pytest.mark.parametrize("grid,tiles", [(56, True), (16, False), (7, False)])
def test_thin_bridges_add_the_same_context_either_way(grid, tiles):
    """Where the encoders' grid tiles the boundary's in windows of 4x4 or more the
    bridge adds with ``add_to_band``; elsewhere it upsamples each part: the same sum."""
    torch.manual_seed(0)
    target, source = Geometry("NCHW", 64, grid, grid), Geometry("NCHW", 16, 2 * grid, 2 * grid)
    bridge = get_design("scaled").bridge(target, [source], Geometry("NCHW", 3, 224, 224))
    assert isinstance(bridge, scaled.FusedBridge) and bridge.tiles == tiles
    h, c, x = (
        torch.randn(2, 64, grid, grid),
        torch.randn(2, 16, 2 * grid, 2 * grid),
        torch.randn(2, 3, 224, 224),
    )
    parts = [
        F.interpolate(e(i), size=(grid, grid))
        for e, i in ((bridge.recent[0], c), (bridge.image, x))
    ]
    context = torch.cat(parts, 1)
    expected = torch.cat([h[:, : bridge.width] + context, h[:, bridge.width :]], 1)
    assert torch.equal(bridge(h, [c], x), expected)


def test_both_compile_in_one_graph():
    """``--compile`` compiles a unit's bridge and head with the segment: a graph break
    here would split every unit with a thin bridge (dynamo cannot trace a dtype-valued
    op, such as ``torch.result_type``, inside an autograd.Function)."""
    h = torch.randn(2, 8, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    context = torch.randn(2, 4, 2, 2, requires_grad=True)

    def step(h, context):
        return window_mean(add_to_band(h, context), (2, 2))

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    out = compiled(h, context)
    assert torch.equal(out, step(h, context))
    out.float().sum().backward()
    assert h.grad is not None and context.grad is not None
