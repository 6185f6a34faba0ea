"""The default design: the paper's modules where they cost little, the thin ones where not."""

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from contsup.auxiliary import DEFAULT_DESIGN, sized
from contsup.auxiliary.scaled import FusedBridge
from contsup.bridges import Bridge
from contsup.budget import _meta
from contsup.context import gather_sources
from contsup.geometry import Geometry
from contsup.learner import wrap
from contsup.memory import SavedTensorTracker
from contsup.momentum_heads import MomentumHead
from contsup.recipes import load_recipe
from tests.conftest import create

IMAGE = Geometry("NCHW", 3, 32, 32)
# The learning benchmark's cuts at K=16: the paper's, from its Table 2 recipe.
T2 = Path(__file__).resolve().parents[3] / "recipes" / "t2_resnet32_cifar10.yaml"
PAPER_K16_CUTS = dict(load_recipe(T2).runs)["K16-R1E-softmax"]["cuts"]


def is_rich(bridge: nn.Module) -> bool:
    return isinstance(bridge, Bridge)  # the paper's; the thin one is scaled's FusedBridge


@pytest.mark.parametrize(
    "target,sources,image",
    [
        (Geometry("NCHW", 16, 32, 32), [], IMAGE),  # E at full resolution
        (Geometry("NCHW", 64, 8, 8), [Geometry("NCHW", 32, 16, 16)], IMAGE),  # R1E across a stage
        (Geometry("NCHW", 32, 16, 16), [Geometry("NCHW", 32, 16, 16)], None),  # R1
    ],
)
def test_paper_saved_values_are_what_the_rich_bridge_saves(target, sources, image):
    bridge = sized.build_bridge(target, sources, image)
    assert is_rich(bridge)
    batch = 4
    inputs = [torch.randn(_meta(g, batch).shape) for g in sources]
    x = torch.randn(batch, 3, 32, 32)
    with SavedTensorTracker([*bridge.parameters(), *bridge.buffers(), *inputs, x]) as tracker:
        bridge(torch.randn(_meta(target, batch).shape), inputs, x)
    predicted = sized.paper_saved_values(target, sources, image)
    measured = tracker.peak_bytes / 4 / batch  # float32 values per image
    # The formula also counts conv inputs that are the (held) inputs themselves; BatchNorm's
    # per-channel statistics, which it leaves out, are a few hundred values.
    held = sum(g.channels * g.height * g.width for g in [*sources, IMAGE])
    assert measured - 512 <= predicted <= measured + held


def test_small_inputs_get_rich_bridges_into_every_channel():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    learner = wrap(create("resnet20"), 4, context="R1E", example_input=x)
    assert learner.aux_config.design == DEFAULT_DESIGN == "sized"
    assert all(is_rich(b) for b in learner.bridges)
    k = 2
    bridge, boundaries = learner.bridges[k], learner.partition.boundaries
    h = torch.randn(2, *boundaries[k].shape[1:])
    earlier = [torch.randn(2, *b.shape[1:]) for b in boundaries[:k]]
    sources = learner.network.sources(k, earlier, x)
    changed = (bridge(h, sources, x) != h).flatten(2).any(-1).any(0)
    assert changed.all()  # every channel of the boundary gets context


@pytest.mark.parametrize("name", ["resnet50", "vit_small_patch16_224"])
def test_224_px_gets_the_thin_bridges_of_scaled(name):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    x = torch.empty(8, 3, 224, 224, device="meta")
    default = wrap(model, 8, context="R1E", example_input=x)
    thin = wrap(model, 8, context="R1E", aux="scaled", example_input=x)
    assert not any(is_rich(b) for b in default.bridges)
    shapes = [[p.shape for p in b.parameters()] for b in default.bridges]
    assert shapes == [[p.shape for p in b.parameters()] for b in thin.bridges]


def test_an_rn_bridge_whose_convs_would_be_costly_is_the_thin_one():
    """EfficientNet-B0's last R1 boundary at 224 px: it saves little (a 7x7 grid), but
    the paper's 1x1 conv from 672 channels at 14x14 costs 25M multiply-adds an image."""
    target, source = Geometry("NCHW", 192, 7, 7), Geometry("NCHW", 672, 14, 14)
    assert sized.paper_saved_values(target, [source], None) <= sized.RICH_LIMIT
    assert sized.paper_recent_macs(target, [source]) > sized.RECENT_LIMIT
    assert isinstance(sized.build_bridge(target, [source], None), FusedBridge)
    # A CIFAR ResNet's costliest R1 bridge (across a stage) stays the paper's.
    small = Geometry("NCHW", 16, 32, 32)
    assert is_rich(sized.build_bridge(Geometry("NCHW", 32, 16, 16), [small], None))


def test_each_bridge_is_sized_by_itself(monkeypatch):
    """A limit between two boundaries' costs makes one network of both kinds."""
    learner = wrap(create("resnet20"), 4, context="R1E", example_input=torch.zeros(2, 3, 32, 32))
    costs = [
        sized.paper_saved_values(
            learner.geometries[k],
            gather_sources(k, learner.context, learner.geometries, learner.aux_config.image),
            learner.aux_config.image,
        )
        for k in range(learner.k - 1)
    ]
    assert len(set(costs)) > 1
    monkeypatch.setattr(sized, "RICH_LIMIT", min(costs))
    cuts = [b.tensors[0].node for b in learner.partition.boundaries]  # balance would move them
    mixed = wrap(
        create("resnet20"), cuts=cuts, context="R1E", example_input=torch.zeros(2, 3, 32, 32)
    )
    kinds = [is_rich(b) for b in mixed.bridges]
    assert kinds == [c <= min(costs) for c in costs]
    assert all(isinstance(b, FusedBridge) for b, rich in zip(mixed.bridges, kinds) if not rich)


def _widest_weight_over_bound(module: nn.Module) -> float:
    """Largest |w| / (1 / sqrt(fan_in)) over the convs: at most 1 under PyTorch's default init."""
    return max(
        float(m.weight.detach().abs().max() * (m.weight[0].numel() ** 0.5))
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    )


def test_paper_modules_keep_pytorchs_default_init_and_paper_keeps_the_reference():
    """The reference's He init made the paper's modules learn slower (docs/context.md)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    chosen = wrap(
        create("resnet20"), 4, context="R1E", aux="sized", example_input=x, momentum_heads=None
    )
    paper = wrap(create("resnet20"), 4, context="R1E", aux="paper", example_input=x)
    for modules in (chosen.bridges, chosen.heads):
        assert all(_widest_weight_over_bound(m) <= 1.0 for m in modules)
    for modules in (paper.bridges, paper.heads):
        assert all(_widest_weight_over_bound(m) > 1.0 for m in modules)


def _first_conv(head: nn.Module) -> nn.Conv2d:
    return next(m for m in head.modules() if isinstance(m, nn.Conv2d))


def test_small_inputs_get_the_papers_heads():
    x = torch.zeros(2, 3, 32, 32)
    learner = wrap(create("resnet20"), 4, context="R1E", aux="sized", example_input=x)
    assert all(_first_conv(h).kernel_size == (3, 3) for h in learner.heads[:-1])  # paper: 3x3
    thin = wrap(create("resnet20"), 4, context="R1E", aux="scaled", example_input=x)
    assert all(_first_conv(h).kernel_size == (1, 1) for h in thin.heads[:-1])  # scaled: 1x1 first


@pytest.mark.parametrize(
    "config,geometry",
    [("1c2f", Geometry("NCHW", 16, 32, 32)), ("2c2f", Geometry("NCHW", 64, 7, 9))],
)
def test_paper_head_macs_count_the_heads_convs(config, geometry):
    from torch.utils.flop_counter import FlopCounterMode

    from contsup.auxiliary import paper

    head = paper.build_head(config, geometry, out_features=10, width=64)
    counter = FlopCounterMode(display=False)
    with counter:
        head(torch.zeros(1, geometry.channels, geometry.height, geometry.width))
    conv_flops = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert sized.paper_head_macs(config, geometry, width=64) == conv_flops // 2


@pytest.mark.parametrize("momentum", [None, "auto"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_the_learning_yardstick_builds_only_the_papers_modules(shape, momentum):
    """resnet32 at K=16 on 32 px with the paper's cuts (the yardstick's learner): no
    thin module, so nothing the thin modules' widths do reaches it; with momentum heads
    (the default there), each head is the paper's at the next boundary."""
    from contsup.auxiliary import paper

    x = torch.zeros(2, *shape)
    model = create("resnet32", in_chans=shape[0])
    learner = wrap(
        model, cuts=PAPER_K16_CUTS, context="R1E", example_input=x, momentum_heads=momentum
    )
    assert len(learner.bridges) == 15 and all(is_rich(b) for b in learner.bridges)
    heads = learner.heads[:-1]
    geometries = learner.geometries
    if momentum:
        assert all(isinstance(h, MomentumHead) for h in learner.heads)
        heads, geometries = [h.head for h in heads], geometries[1:]
    assert heads and all(_first_conv(h).kernel_size == (3, 3) for h in heads)
    config = learner.aux_config
    for head, g in zip(heads, geometries):
        torch.manual_seed(0)
        built = paper.build_head(config.head, g, config.out_features, config.width, init=None)
        assert repr(built) == repr(head)
