"""contsup.auxiliary.paper: the reference implementation's heads, encoders, decoder and init."""

import pytest
import torch
from torch import nn

from contsup.geometry import FromMap
from contsup.learner import wrap
from tests.conftest import create


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
