"""The default stays small at 224 px (where its bridges are ``scaled``'s); ``scaled``'s
thin bridges add context to a band of channels."""

import math

import pytest
import timm
import torch
from torch import nn

import partitioner
from contsup.budget import aux_budget
from contsup.geometry import Geometry
from contsup.learner import wrap
from tests.conftest import create


def meta_learner(name, k, size=224, batch=8, **kwargs):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    x = torch.empty(batch, 3, size, size, device="meta")
    return wrap(model, k, example_input=x, **kwargs)


def budget_of(learner):
    batch = learner.partition.input_shape[0]
    return aux_budget(learner.aux_config, learner.geometries, learner.partition.stats, batch)


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "vit_small_patch16_224"])
def test_nothing_learned_runs_above_the_boundary_grid(name):
    """Every conv of a bridge or head sees at most twice its boundary's grid a side."""
    learner = meta_learner(name, 6, context="R2E")
    seen = []
    for k, (bridge, head) in enumerate(zip(learner.bridges, learner.heads)):
        for conv in (m for part in (bridge, head) for m in part.modules()):
            if isinstance(conv, nn.Conv2d):
                conv.register_forward_pre_hook(lambda m, a, k=k: seen.append((k, a[0].shape)))
    learner.network(torch.empty(8, 3, 224, 224, device="meta"))
    for head, boundary in zip(learner.heads, learner.partition.boundaries):
        head(torch.empty(boundary.shape, device="meta"))
    assert len({k for k, _ in seen}) == learner.k - 1
    for k, shape in seen:
        g = learner.geometries[k]
        assert shape[-2] <= 2 * g.height and shape[-1] <= 2 * g.width, (k, shape, g)


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "vit_small_patch16_224"])
def test_scaled_heads_and_bridges_never_widen(name):
    learner = meta_learner(name, 4, context="R1E")
    for part, g in [
        *zip(learner.heads, learner.geometries),
        *zip(learner.bridges, learner.geometries),
    ]:
        for m in part.modules():
            if isinstance(m, nn.Conv2d):
                assert m.out_channels <= min(g.channels, 64)


@pytest.mark.parametrize("gain,identity", [("none", False), ("zero", True)])
def test_context_flows_from_the_first_step_unless_a_zero_gain_holds_it(gain, identity):
    """The default adds context at once; the 0.2 style (a gain from zero) starts as h' = h."""
    from contsup.auxiliary.scaled import BridgeStyle, FusedBridge
    from contsup.learner import gather_sources

    real = wrap(create("resnet20"), 4, context="R2E")
    x = torch.randn(2, 3, 32, 32)
    h = torch.randn(2, *real.partition.boundaries[1].shape[1:])
    sources = real.network.sources(1, [torch.randn(2, *real.partition.boundaries[0].shape[1:])], x)
    sources_geometry = gather_sources(1, real.context, real.geometries, real.aux_config.image)
    bridge = FusedBridge(real.geometries[1], sources_geometry, real.aux_config.image,
                         BridgeStyle(gain=gain))  # fmt: skip
    assert torch.equal(bridge(h, sources, x), h) == identity
    if gain == "none":
        assert not torch.equal(real.bridges[1](h, sources, x), h)  # the default


def test_scaled_costs_a_fraction_of_paper_at_224_px():
    """The issue's budget: aux params and FLOPs <= 10% of resnet50's at K=16."""
    scaled = budget_of(meta_learner("resnet50", 16, context="R1E", objective="memory"))
    paper = budget_of(meta_learner("resnet50", 16, context="R1E", objective="memory", aux="paper"))
    fractions = scaled.fractions()
    assert fractions["params"] <= 0.10 and fractions["flops"] <= 0.10
    assert fractions["saved_bytes"] < paper.fractions()["saved_bytes"] / 20
    # Each segment's step with its aux modules stays within 15% of the largest bare segment.
    steps = [b.saved_bytes + a.saved_bytes for b, a in zip(scaled.backbone, scaled.aux)]
    assert max(steps) <= 1.15 * max(b.saved_bytes for b in scaled.backbone)


def test_token_heads_pool_tokens_then_normalise():
    learner = meta_learner("vit_small_patch16_224", 4, context="R1E")
    kinds = [type(m).__name__ for m in learner.heads[0]]
    assert kinds[:2] == ["TokenMean", "LayerNorm"] and "Conv2d" not in kinds


def test_balancing_counts_aux_costs():
    """A cut whose aux modules are priced out is avoided; with none, cuts are plain."""
    model = create("resnet20")
    x = torch.zeros(2, 3, 32, 32)
    plain = partitioner.partition(model, x, 4, "flops")
    banned = {b.tensors[0].node for b in plain.boundaries}

    def extra_cost(boundary):
        return (math.inf, 0.0) if boundary.tensors[0].node in banned else (0.0, 0.0)

    moved = partitioner.partition(model, x, 4, "flops", extra_cost=extra_cost)
    assert banned.isdisjoint(b.tensors[0].node for b in moved.boundaries)
    priced = partitioner.partition(model, x, 4, "flops", extra_cost=lambda b: (1e6, 2e6))
    assert priced.extra_costs == [1e6, 3e6, 3e6, 2e6]
    assert priced.imbalance == pytest.approx(
        max(s.flops + e for s, e in zip(priced.stats, priced.extra_costs))
        / (sum(s.flops for s in priced.stats) + 9e6)
        * 4
    )


@pytest.mark.parametrize(
    "name,kwargs,size",
    [("resnet18", {}, 32), ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, 32)],
)
def test_scaled_context_lands_in_the_first_channels_only(name, kwargs, size):
    """h' = h + [context; 0]: the other channels and the class token pass unchanged."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    learner = wrap(
        create(name, **kwargs), 3, context="R1E", aux="scaled", objective="params", example_input=x
    )
    bridge, spec = learner.bridges[1], learner.partition.boundaries[1]  # wider than 64
    h = torch.randn(2, *spec.shape[1:])
    previous = torch.randn(2, *learner.partition.boundaries[0].shape[1:])
    out = bridge(h, learner.network.sources(1, [previous], x), x)
    width = bridge.width
    assert 0 < width < h.shape[-1 if spec.layout == "NLC" else 1]
    if spec.layout == "NLC":
        assert torch.equal(out[:, :, width:], h[:, :, width:])
        assert torch.equal(out[:, 0], h[:, 0])  # the class token gets no context
        assert not torch.equal(out[:, 1:, :width], h[:, 1:, :width])
    else:
        assert torch.equal(out[:, width:], h[:, width:])
        assert not torch.equal(out[:, :width], h[:, :width])


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100"])
def test_aux_flops_stay_under_five_percent_where_layers_are_cheap(name):
    """Issue 20's goal at 224 px, K=16, batch 32 (``contsup bench``'s cuts): heads and
    bridges of fixed widths cost 12-16% of these backbones' FLOPs."""
    learner = meta_learner(name, 16, batch=32, context="R1E", objective="memory")
    assert budget_of(learner).fractions()["flops"] <= 0.05


@pytest.mark.parametrize(
    "geometry",
    [
        Geometry("NCHW", 16, 112, 112),
        Geometry("NCHW", 40, 28, 28),
        Geometry("NCHW", 80, 14, 14),
        Geometry("NCHW", 672, 7, 7),
        Geometry("NCHW", 2048, 7, 7),
        Geometry("NCHW", 256, 56, 56),
    ],
)
@pytest.mark.parametrize("config", ["1c2f", "2c2f"])
def test_head_convs_take_the_widest_width_within_their_budget(geometry, config):
    """The built head's conv FLOPs are what ``head_conv_macs`` says, within
    ``HEAD_MACS`` per boundary value, and one channel more would not be."""
    from torch.utils.flop_counter import FlopCounterMode

    from contsup.auxiliary import scaled

    head = scaled.build_head(config, geometry, out_features=10, width=0)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    width, count = convs[0].out_channels, len(convs) - 1
    grid = scaled._head_grid(geometry, scaled.HEAD_GRID)
    cells = grid.height * grid.width
    end = next(i for i, m in enumerate(head) if isinstance(m, nn.AdaptiveAvgPool2d))
    with FlopCounterMode(display=False) as counter:  # the convs only: no Linear yet
        head[:end](torch.zeros(2, geometry.channels, geometry.height, geometry.width))
    macs = counter.get_total_flops() // 2 // 2  # per image, multiply-adds
    assert macs == scaled.head_conv_macs(geometry.channels, width, cells, count)
    budget = scaled.HEAD_MACS * geometry.channels * geometry.height * geometry.width
    narrowest = min(geometry.channels, scaled.HEAD_MIN_WIDTH)
    assert narrowest <= width <= min(geometry.channels, scaled.HEAD_WIDTH)
    assert width == narrowest or macs <= budget
    if width < min(geometry.channels, scaled.HEAD_WIDTH):
        assert scaled.head_conv_macs(geometry.channels, width + 1, cells, count) > budget


def test_legacy_design_builds_the_modules_of_0_2():
    """``scaled-0.2`` (runs of contsup 0.2) keeps 32-channel heads on <= 16x16 and E
    on the boundary's own grid, whatever ``scaled`` now does."""
    from contsup.auxiliary import get_design

    legacy, thin = get_design("scaled-0.2"), get_design("scaled")
    target = Geometry("NCHW", 40, 28, 28)
    image = Geometry("NCHW", 3, 224, 224)
    old, new = legacy.head("1c2f", target, 10, 0), thin.head("1c2f", target, 10, 0)
    h = torch.zeros(2, 40, 28, 28)
    assert old[:2](h).shape[-2:] == (14, 14) and new[:2](h).shape[-2:] == (7, 7)
    assert old[2].out_channels == 32 > new[2].out_channels
    old_e, new_e = legacy.bridge(target, [], image).image, thin.bridge(target, [], image).image
    x = torch.zeros(1, 3, 224, 224)
    assert old_e(x).shape[-2:] == (28, 28) and new_e(x).shape[-2:] == (14, 14)


@pytest.mark.parametrize("grid, coarse", [(112, 14), (56, 14), (32, 16), (28, 14), (8, 4)])
def test_encoders_work_on_half_the_grid_at_most_16_a_side(grid, coarse):
    """Half the grid, halved again while over 16x16: a 112x112 boundary's encoders
    cost 1/64 of the boundary's grid, not 1/4; at 32 px (grids <= 32) only halving."""
    from contsup.auxiliary import get_design

    target, source = Geometry("NCHW", 64, grid, grid), Geometry("NCHW", 16, grid, grid)
    image = Geometry("NCHW", 3, 8 * grid, 8 * grid)
    bridge = get_design("scaled").bridge(target, [source], image)
    recent, encoder = bridge.recent[0], bridge.image
    c = torch.zeros(2, 16, grid, grid)
    x = torch.zeros(2, 3, 8 * grid, 8 * grid)
    assert _until_conv(recent, c).shape[-2:] == (coarse, coarse)
    assert encoder(x).shape[-2:] == recent(c).shape[-2:] == (coarse, coarse)
    assert bridge(torch.zeros(2, 64, grid, grid), [c], x).shape[-2:] == (grid, grid)
    legacy = get_design("scaled-0.2").bridge(target, [source], image).recent[0]
    assert _until_conv(legacy, c).shape[-2:] == (grid // 2, grid // 2)  # 0.2's runs load as trained


def _until_conv(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for module in encoder:
        if isinstance(module, nn.Conv2d):
            return x
        x = module(x)
    raise AssertionError("no conv")


def test_heads_pool_whole_windows_without_saving_the_boundary():
    """avg_pool2d saves its input: a boundary-sized tensor the segment may not keep."""
    from contsup.auxiliary import scaled
    from contsup.memory import SavedTensorTracker

    h = torch.randn(4, 24, 56, 56, requires_grad=True)
    pool = scaled.WindowMean((7, 7))
    assert torch.allclose(pool(h), nn.AvgPool2d(7)(h), atol=1e-6)
    for module, saves in ((pool, False), (nn.AvgPool2d(7), True)):
        with SavedTensorTracker([]) as tracker:
            module(h).sum()
        assert (tracker.peak_bytes >= h.numel() * 4) == saves
