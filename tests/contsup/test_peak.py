"""contsup.peak: a training step's peak, predicted on the meta device."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import contsup
from contsup.live_bytes import LiveBytes
from contsup.momentum_heads import shadows
from contsup.peak import _convolution_backward_scratch, _FusedAttention, predict_step

BATCH = 8


@pytest.mark.parametrize("momentum", [None, 0.99])
@pytest.mark.parametrize("context", ["E", "R1E", "R0"])
def test_units_priced_once_for_many_k_give_each_k_its_own_peak(context, momentum):
    """A momentum head's unit also runs the next segment's shadow: priced by its end too."""
    model = timm.create_model("resnet20", num_classes=10).to("meta")
    x = torch.empty(BATCH, 3, 32, 32, device="meta")
    y = torch.zeros(BATCH, dtype=torch.long, device="meta")
    units = {}
    for k in (1, 2, 3, 4, 6):
        learner = contsup.wrap(
            model, k, context=context, objective="memory", example_input=x, momentum_heads=momentum
        )
        alone = predict_step(learner, x, y)
        assert predict_step(learner, x, y, units=units) == alone
    if momentum is None:
        assert len(units) < 1 + 2 + 3 + 4 + 6  # some units recurred


@pytest.mark.parametrize("momentum", [None, 0.99])
def test_the_meta_walk_holds_what_a_real_step_holds_op_by_op(momentum):
    """A real CPU step counted as the walk counts the meta one: the same bytes at the
    peak, so nothing (a later unit's gradients, a freed input, a momentum head's
    shadow) is counted early or late."""
    torch.manual_seed(0)
    model = timm.create_model("resnet20", num_classes=10)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    # Cuts where a later unit peaks, with or without momentum heads (whose shadows
    # the balance does not price, so it may cut where the first unit peaks).
    cuts = ["layer1_1_act2", "layer2_0_act2"]
    learner = contsup.wrap(
        model, cuts=cuts, context="R1E", example_input=x, momentum_heads=momentum
    )
    meta = copy.deepcopy(learner).to("meta")
    # On CUDA no CPU kernel's scratch is added: what is left is the tensors' bytes.
    predicted = predict_step(meta, x.to("meta"), y.to("meta"), device="cuda")
    with LiveBytes() as live:
        learner.local_backward(x, y)
    weights = sum(p.numel() * p.element_size() for p in learner.parameters())
    shadow_bytes = sum(t.numel() * t.element_size() for t in shadows(learner))
    assert (shadow_bytes > 0) == (momentum is not None)
    batch = x.numel() * 4 + y.numel() * 8
    assert 0 < predicted.unit < learner.k  # a unit after the first, not the optimizer step
    assert predicted.grads > 0
    # Weights, their momentum and the shadows are held outside the block.
    real = 2 * weights + shadow_bytes + batch + live.peak
    # The real step also holds the earlier units' detached losses and scores: bytes.
    assert abs(predicted.total - predicted.margin - real) <= 4096


def test_the_cpu_prediction_adds_a_convolution_backwards_scratch():
    model = timm.create_model("resnet20", num_classes=10).to("meta")
    x = torch.empty(BATCH, 3, 32, 32, device="meta")
    y = torch.zeros(BATCH, dtype=torch.long, device="meta")
    learner = contsup.wrap(model, 2, context="R1E", objective="memory", example_input=x)
    cpu, cuda = predict_step(learner, x, y), predict_step(learner, x, y, device="cuda")
    assert cpu.transient > cuda.transient
    assert cpu.total > cuda.total - cuda.margin


def _attention_peak(q: torch.Tensor) -> int:
    with LiveBytes() as live:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    return live.peak


def test_attention_is_walked_as_the_fused_kernel_a_cpu_runs():
    real = _attention_peak(torch.randn(2, 3, 64, 16, requires_grad=True))
    meta = torch.empty(2, 3, 64, 16, device="meta", requires_grad=True)
    with _FusedAttention():
        walked = _attention_peak(meta)
    meta.grad = None
    # Unaided, the meta device runs the math form, which saves the 64x64 attention.
    assert walked == real < _attention_peak(meta)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_a_strided_dense_convolutions_backward_holds_two_inputs_on_the_cpu(groups):
    x = torch.empty(8, 16, 32, 32, device="meta")
    w = torch.empty(16, 16 // groups, 3, 3, device="meta")
    backward = torch.ops.aten.convolution_backward.default
    for stride in (1, 2):
        grad = F.conv2d(x, w, stride=stride, padding=1, groups=groups)  # the incoming gradient
        args = (grad, x, w, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], groups, [True] * 3)
        # The input and the incoming gradient; a strided dense one twice the (larger)
        # input. Measured: a 3x3 conv's backward at batch 32, 64 channels, 112x112,
        # stride 2, held 196 MiB beside its outputs dense, 122 MiB in four groups.
        dense = stride > 1 and groups == 1
        held = 2 * x.numel() * 4 if dense else (x.numel() + grad.numel()) * 4
        assert _convolution_backward_scratch(backward, args, None) == held
    assert _convolution_backward_scratch(torch.ops.aten.relu.default, (x,), None) == 0
