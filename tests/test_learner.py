import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import contsup
import partitioner
from contsup.auxiliary.paper import build_head
from contsup.context import ContextMode, parse_context
from contsup.geometry import FromMap, Geometry, pool_to
from contsup.learner import LocalLearner, recent_sources, wrap
from contsup.losses import supervised_contrastive
from contsup.memory import SavedTensorTracker
from tests.conftest import create

MODES = ["R0", "E", "R1", "R2", "R1E", "R2E"]
HEADS = ["0c1f", "0c2f", "1c1f", "1c2f", "1c3f", "2c2f"]
MODELS = [
    ("resnet32", 32, {}),
    ("vit_tiny_patch16_224", 32, {"img_size": 32}),
    ("swin_tiny_patch4_window7_224", 112, {"img_size": 112}),
    ("convnext_atto", 64, {}),
]


@pytest.mark.parametrize(
    "text,mode",
    [
        ("R0", (0, False)),
        ("E", (0, True)),
        ("R1", (1, False)),
        ("R16", (16, False)),
        ("R2E", (2, True)),
        ("R1E", (1, True)),
    ],
)
def test_parse_context(text, mode):
    assert parse_context(text) == ContextMode(*mode)
    assert str(parse_context(text)) == text


@pytest.mark.parametrize("text", ["", "R", "R0E", "E1", "r1", "R-1", "RE", "X", "R1EE"])
def test_unknown_context_mode_names_accepted_forms(text):
    with pytest.raises(ValueError, match="R0 .*E .*Rn .*RnE"):
        parse_context(text)


def test_carry_keeps_the_window_later_bridges_read():
    from contsup.context import ContextMode
    from contsup.network import Carry

    carry = Carry(ContextMode(2, False))
    for h in ("h0", "h1", "h2"):
        carry.keep(h)
    assert carry.inputs == [None, "h1", "h2"] and carry.window() == ["h1", "h2"]
    resumed = Carry.resumed(carry.mode, "out", carry.window(), unit=4)
    assert resumed.inputs == carry.inputs and resumed.out == "out"
    assert Carry(ContextMode(0, True)).window() == []


def test_recent_sources():
    r1, r4 = ContextMode(1, False), ContextMode(4, False)
    assert recent_sources(0, r1) == [-1]
    assert recent_sources(5, r1) == [4]
    assert recent_sources(1, r4) == [0, -1]  # the image stands in, once
    assert recent_sources(6, r4) == [5, 4, 3, 2]


def test_with_e_the_image_does_not_also_stand_in():
    """Reference R1E: at the first boundary only E is applied (no R1 encoder of the image)."""
    assert recent_sources(0, ContextMode(1, True)) == []
    assert recent_sources(1, ContextMode(4, True)) == [0]
    assert recent_sources(3, ContextMode(1, True)) == [2]
    learner = wrap(create("resnet20"), 4, context="R1E", aux="paper")
    assert len(learner.bridges[0].recent) == 0 and learner.bridges[0].image is not None
    assert all(len(b.recent) == 1 for b in learner.bridges[1:])


@pytest.mark.parametrize("name,size,kwargs", MODELS, ids=[m[0] for m in MODELS])
def test_every_mode_and_head_builds_and_runs(name, size, kwargs):
    model = create(name, num_classes=10, **kwargs)
    example = torch.zeros(2, 3, size, size)
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 0, 1])
    cases = [(mode, "1c2f", "ce") for mode in MODES] + [("R1E", h, "contrast") for h in HEADS]
    for mode, head, loss in cases:
        learner = wrap(model, 3, context=mode, head=head, local_loss=loss, example_input=example)
        step = learner.local_backward(x, y)
        assert len(step.losses) == 3 and all(torch.isfinite(torch.tensor(step.losses)))
        assert step.logits.shape == (4, 10)
        has_context = mode != "R0"
        assert any(p.grad is not None for p in learner.bridges.parameters()) == has_context
        learner.eval()
        with torch.no_grad():
            assert learner(x).shape == (4, 10)


def test_cifar_heads_are_the_papers():
    learner = wrap(create("resnet32"), 4, objective="memory", aux="paper")
    convs = [[m for m in h if isinstance(m, nn.Conv2d)][0] for h in learner.heads]
    spec = [(c.in_channels, c.out_channels, c.stride[0], c.bias is None) for c in convs]
    widths = [b.shape[1] for b in learner.partition.boundaries]
    expected = {16: (16, 32, 2, True), 32: (32, 64, 2, True), 64: (64, 64, 1, True)}
    assert spec == [expected[w] for w in widths]
    linears = [
        [(m.in_features, m.out_features) for m in h if isinstance(m, nn.Linear)]
        for h in learner.heads
    ]
    assert all(lin == [(lin[0][0], 128), (128, 10)] for lin in linears)


@pytest.mark.parametrize(
    "config,convs,linears",
    [
        ("0c1f", 0, 1),
        ("0c2f", 0, 2),
        ("1c1f", 1, 1),
        ("1c2f", 1, 2),
        ("1c3f", 1, 3),
        ("2c2f", 2, 2),
    ],
)
def test_head_configs(config, convs, linears):
    head = build_head(config, Geometry("NCHW", 16, 32, 32), 10, width=64)
    assert sum(isinstance(m, nn.Conv2d) for m in head) == convs
    assert sum(isinstance(m, nn.Linear) for m in head) == linears
    assert head(torch.randn(2, 16, 32, 32)).shape == (2, 10)


def test_image_and_boundary_encoders_are_the_papers():
    learner = wrap(create("resnet32"), 4, context="R1E", aux="paper")
    bridge = learner.bridges[1]  # feeds a 32x16x16 boundary
    image = [m for m in bridge.image if not isinstance(m, FromMap)]
    assert [type(m).__name__ for m in image] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "AvgPool2d"
    ]  # fmt: skip
    assert (image[0].in_channels, image[0].out_channels, image[0].kernel_size) == (3, 12, (3, 3))
    # Reference: both convs of E have a bias.
    assert image[0].bias is not None and image[3].bias is not None
    assert image[3].out_channels == 32
    x = torch.randn(2, 3, 32, 32)
    assert bridge.image(x).shape == (2, 32, 16, 16)
    (encoder,) = bridge.recent
    conv = next(m for m in encoder if isinstance(m, nn.Conv2d))
    assert conv.kernel_size == (1, 1) and conv.bias is not None


@pytest.mark.parametrize("size,out", [(32, 32), (32, 16), (32, 8), (14, 7), (28, 7), (7, 3)])
def test_pooling_is_adaptive_average_pooling(size, out):
    pool = pool_to(Geometry("NCHW", 4, size, size), Geometry("NCHW", 4, out, out))
    x = torch.randn(2, 4, size, size)
    assert torch.allclose(pool(x), nn.AdaptiveAvgPool2d(out)(x), atol=1e-6)


def segment_input(learner, x, j):
    """A thunk building segment j's input: everything before is detached, its bridge live."""
    inputs, h = [], x
    for k in range(j):
        out = learner.segments[k](h).detach()
        sources = learner.network.sources(k, inputs, x)
        if k == j - 1:
            return lambda: learner.bridges[k](out, sources, x)
        h = learner.bridges[k](out, sources, x)
        inputs.append(h.detach())
    return lambda: x


@pytest.mark.parametrize("mode", ["R0", "E", "R2E"])
def test_gradient_isolation(mode):
    """After local_backward, segment j's gradients are those of its own loss alone."""
    torch.manual_seed(0)
    learner = wrap(create("resnet20"), 4, context=mode)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    learner.zero_grad()
    learner.local_backward(x, y)
    recorded = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    for j in range(learner.k):
        owned = {f"network.segments.{j}.", f"heads.{j}.", f"network.bridges.{j - 1}."}
        learner.zero_grad(set_to_none=True)
        out = learner.segments[j](segment_input(learner, x, j)())
        last = j == learner.k - 1
        loss = F.cross_entropy(out, y) if last else learner.local_loss_of(j, out, y, None)
        loss.backward()
        for name, p in learner.named_parameters():
            mine = any(name.startswith(prefix) for prefix in owned)
            if mine and p.grad is not None:
                assert torch.equal(p.grad, recorded[name]), name
            elif not mine:
                assert p.grad is None, f"segment {j}'s loss reached {name}"
    # Later segments cannot change earlier gradients: scramble them and look again.
    with torch.no_grad():
        for p in learner.segments[-1].parameters():
            p.mul_(-3.0)
    learner.zero_grad()
    learner.local_backward(x, y)
    for name, p in learner.named_parameters():
        if name.startswith(("network.segments.0.", "heads.0.")):
            assert torch.equal(p.grad, recorded[name]), name


def test_memory_peak_is_one_segment_not_the_sum():
    model = create("resnet56", num_classes=10)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with SavedTensorTracker(model.parameters()) as e2e:
        F.cross_entropy(model(x), y).backward()
    learner = wrap(model, 8, context="R1E")
    with SavedTensorTracker(learner.parameters()) as local:
        learner.local_backward(x, y)
    assert local.current_bytes == 0  # every graph was freed
    # The largest single step: segment j with its head and its input bridge, alone.
    steps = []
    for j in range(learner.k):
        make_input = segment_input(learner, x, j)
        with SavedTensorTracker(learner.parameters()) as one:
            out = learner.segments[j](make_input())
            last = j == learner.k - 1
            loss = F.cross_entropy(out, y) if last else learner.local_loss_of(j, out, y, None)
            loss.backward()
        steps.append(one.peak_bytes)
    assert max(steps) <= local.peak_bytes <= 1.05 * max(steps)
    assert local.peak_bytes < 0.5 * e2e.peak_bytes


def test_export_is_a_standalone_copy_with_identical_outputs():
    learner = wrap(create("resnet20"), 4, context="R1E").eval()
    x = torch.randn(2, 3, 32, 32)
    net = learner.export()
    with torch.no_grad():
        assert torch.equal(net(x), learner(x))
    assert not any(
        isinstance(m, type(learner.heads[0])) and m in list(net.modules()) for m in learner.heads
    )
    assert {id(p) for p in net.parameters()}.isdisjoint(id(p) for p in learner.parameters())


def test_decoder_loss_weights_interpolate():
    learner = wrap(create("resnet20"), 5, decoder=[5, 0, 0.5, 1])
    assert learner.loss_weights == [(5.0, 0.0), (3.5, 1 / 3), (2.0, 2 / 3), (0.5, 1.0)]
    assert len(learner.decoders) == 4
    step = learner.local_backward(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert all(torch.isfinite(torch.tensor(step.losses)))
    assert all(p.grad is not None for p in learner.decoders[0].parameters())


def test_supervised_contrastive_matches_its_definition():
    """Reference: the per-anchor loss is averaged over all anchors of the batch; an
    anchor without a positive (class 2 here) contributes 0."""
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 0, 1, 2, 0])
    n = F.normalize(z, dim=1)
    terms = []
    for i, j in itertools.product(range(6), range(6)):
        if i != j and y[i] == y[j]:
            denominator = sum(torch.exp(n[i] @ n[a] / 0.07) for a in range(6) if a != i)
            terms.append((i, torch.log(torch.exp(n[i] @ n[j] / 0.07) / denominator)))
    per_anchor = [
        torch.stack([t for a, t in terms if a == i]).mean()
        if any(a == i for a, _ in terms)
        else torch.tensor(0.0)
        for i in range(6)
    ]
    expected = -torch.stack(per_anchor).sum() / 6
    assert torch.allclose(supervised_contrastive(z, y), expected, atol=1e-5)


def test_paper_aux_modules_use_the_reference_init():
    """Reference: every conv of heads, bridges and decoder ~ normal(0, sqrt(2/(k*k*out)));
    BN weight 1, bias 0."""
    torch.manual_seed(0)
    learner = wrap(create("resnet32"), 4, context="R1E", aux="paper", decoder=[1, 0, 0, 1])
    convs = [
        m
        for part in (learner.heads, learner.bridges, learner.decoders)
        for m in part.modules()
        if isinstance(m, nn.Conv2d)
    ]
    for conv in convs:
        expected = (2 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels)) ** 0.5
        if conv.weight.numel() >= 1000:  # enough samples for the spread to show
            assert conv.weight.std().item() == pytest.approx(expected, rel=0.1), conv
    norms = [m for m in learner.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


def test_paper_decoder_upsamples_with_aligned_corners_and_a_biased_conv():
    """Reference: bilinear with align_corners=True; the first conv (C->12) has a bias."""
    learner = wrap(create("resnet20"), 3, context="E", aux="paper", decoder=[1, 0, 0, 1])
    decoder = learner.decoders[0]
    upsample = next(m for m in decoder if isinstance(m, nn.Upsample))
    assert upsample.mode == "bilinear" and upsample.align_corners is True
    first = next(m for m in decoder if isinstance(m, nn.Conv2d))
    assert first.out_channels == 12 and first.bias is not None


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"context": "R1X"}, "unknown context mode"),
        ({"head": "1c0f"}, "unknown head"),
        ({"head": "big"}, "unknown head"),
        ({"local_loss": "mse"}, "unknown local loss"),
        ({"decoder": [1, 2]}, "four loss scales"),
        ({"k": 100}, "between 1 and"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"k": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        wrap(create("resnet20"), **kwargs)


def test_public_api_is_exported_at_top_level():
    assert contsup.wrap is wrap
    assert contsup.LocalLearner is LocalLearner
    from contsup.distributed import pipeline
    from contsup.runs import load

    assert contsup.load is load and contsup.distributed.pipeline is pipeline
    for name in contsup.__all__:
        assert getattr(contsup, name) is not None, name
    with pytest.raises(AttributeError):
        contsup.no_such_name  # noqa: B018


def test_exported_network_pickles_and_default_input_follows_img_size(tmp_path):
    # A ViT built for 32x32 keeps timm's 224 default cfg; wrap must use 32x32.
    learner = wrap(create("vit_tiny_patch16_224", img_size=32, num_classes=10), 3, context="R1E")
    assert learner.partition.input_shape == (2, 3, 32, 32)
    net = learner.eval().export()
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_k1_is_ordinary_end_to_end_backprop():
    """wrap(model, 1): one segment, no heads or bridges, the model's gradients exactly."""
    torch.manual_seed(0)
    model = create("resnet20")
    twin = create("resnet20")
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    learner = wrap(model, 1, context="R1E")
    assert learner.k == 1 and len(learner.heads) == 0 and len(learner.bridges) == 0
    step = learner.local_backward(x, y)
    loss = F.cross_entropy(twin(x), y)
    loss.backward()
    assert step.losses == [loss.item()]
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_explicit_cuts_and_plans():
    model = create("resnet32")
    cuts = ["layer1_2_act2", "layer2_1_act2", "layer3_0_act2"]  # the paper's K=4
    learner = wrap(model, context="R1E", cuts=cuts)
    assert [b.node for b in learner.partition.boundaries] == cuts and learner.k == 4
    again = wrap(create("resnet32"), 4, cuts=learner.partition)
    assert [b.node for b in again.partition.boundaries] == cuts
    with pytest.raises(partitioner.PartitionError, match="'layer9_0_act2' is not a cut point"):
        wrap(model, cuts=["layer9_0_act2"])
    with pytest.raises(partitioner.PartitionError, match="in the order"):
        wrap(model, cuts=cuts[::-1])
    with pytest.raises(ValueError, match="k=3 segments need 2 cuts, got 3"):
        wrap(model, 3, cuts=cuts)
    other_size = wrap(create("resnet32"), 2, example_input=torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="made for inputs of shape \\(3, 64, 64\\)"):
        wrap(model, cuts=other_size.partition)


def test_a_batch_of_another_shape_is_refused_with_the_fix():
    import timm

    from contsup.learner import InputShapeError

    model = timm.create_model("resnet18", num_classes=10)
    learner = contsup.wrap(model, k=2, context="R1E", example_input=torch.zeros(2, 3, 64, 64))
    y = torch.randint(0, 10, (2,))
    learner.local_backward(torch.randn(2, 3, 64, 64), y)  # the shape it was built for
    small = torch.randn(2, 3, 32, 32)
    with pytest.raises(
        InputShapeError, match=r"built for inputs of shape \(3, 64, 64\).*example_input"
    ):
        learner.local_backward(small, y)
    with pytest.raises(InputShapeError, match="example_input"):
        learner.eval()(small)
