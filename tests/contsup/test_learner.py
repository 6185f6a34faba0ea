"""contsup.learner: wrap, gradient isolation, memory, exactness of K=1, cuts and plans."""

import pytest
import torch
import torch.nn.functional as F

import contsup
import partitioner
from contsup.errors import ConfigError
from contsup.learner import wrap
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


@pytest.mark.parametrize("momentum,bound", [(None, 0.5), ("auto", 0.6)])
def test_memory_peak_is_one_segment_not_the_sum(momentum, bound):
    """One unit at a time; with momentum heads (the default here) a unit also runs the
    next segment's shadow: two segments, still not the sum."""
    model = create("resnet56", num_classes=10)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with SavedTensorTracker(model.parameters()) as e2e:
        F.cross_entropy(model(x), y).backward()
    learner = wrap(model, 8, context="R1E", momentum_heads=momentum)
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
    assert local.peak_bytes < bound * e2e.peak_bytes


def test_decoder_loss_weights_interpolate():
    learner = wrap(create("resnet20"), 5, decoder=[5, 0, 0.5, 1])
    assert learner.loss_weights == [(5.0, 0.0), (3.5, 1 / 3), (2.0, 2 / 3), (0.5, 1.0)]
    assert len(learner.decoders) == 4
    step = learner.local_backward(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert all(torch.isfinite(torch.tensor(step.losses)))
    assert all(p.grad is not None for p in learner.decoders[0].parameters())


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


def test_meta_learners_share_heads_and_bridges_but_never_hold_one_twice():
    with torch.device("meta"):
        model = create("resnet20", num_classes=10)
    x = torch.empty(8, 3, 32, 32, device="meta")
    shared = {}
    # Plain heads: momentum heads wrap theirs, one per learner.
    options = dict(context="R1E", example_input=x, momentum_heads=None)
    first = wrap(model, 8, meta_modules=shared, **options)
    again = wrap(model, 8, meta_modules=shared, **options)
    alone = wrap(model, 8, **options)
    for learner in (first, alone):
        modules = [*learner.heads, *learner.bridges]
        assert len({id(m) for m in modules}) == len(modules)
    assert [id(h) for h in again.heads] == [id(h) for h in first.heads]
    sizes = [sum(p.numel() for p in learner.parameters()) for learner in (first, alone)]
    assert sizes[0] == sizes[1]
    with pytest.raises(ConfigError, match="meta learners only"):
        wrap(create("resnet20", num_classes=10), 2, meta_modules={})
