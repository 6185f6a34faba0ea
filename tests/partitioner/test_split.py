"""partitioner.split: segments as graph modules."""

import torch

import partitioner
from tests.conftest import create


def test_no_gradient_crosses_a_boundary():
    model = create("resnet20", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    part = partitioner.partition(model, x, k=4).train()
    h = x
    for i, segment in enumerate(part.segments):
        model.zero_grad(set_to_none=True)
        out = segment(h.detach())
        out.float().pow(2).mean().backward()
        for j, other in enumerate(part.segments):
            grads = [p.grad for p in other.parameters()]
            if j == i:
                assert all(g is not None for g in grads)
            else:
                assert all(g is None for g in grads), f"segment {i} reached segment {j}"
        h = out


def test_segments_follow_their_own_mode_and_share_the_models_weights():
    model = create("efficientnet_b0", num_classes=10, drop_path_rate=0.2)
    part = partitioner.partition(model.eval(), torch.randn(1, 3, 64, 64), k=3)
    segment = part.segments[1]
    assert segment.generated_code(training=True) != segment.generated_code(training=False)
    segment.eval()
    assert not any(m.training for m in segment.modules())
    shared = {id(p) for p in model.parameters()}
    assert all(id(p) in shared for p in segment.parameters())


def test_boundary_shapes_follow_the_batch():
    part = partitioner.partition(create("resnet20"), torch.randn(5, 3, 32, 32), k=3)
    assert [b.shape[0] for b in part.boundaries] == [5, 5]
    assert part.stats[-1].output_shape == (5, 10)


def test_swin_boundaries_are_channels_last():
    model = create("swin_tiny_patch4_window7_224", img_size=112)
    part = partitioner.partition(model, torch.randn(1, 3, 112, 112), k=4)
    assert {b.layout for b in part.boundaries} == {"NHWC"}
    vit = partitioner.partition(
        create("vit_tiny_patch16_224", img_size=64), torch.randn(1, 3, 64, 64), k=3
    )
    assert {b.layout for b in vit.boundaries} == {"NLC"}


def test_one_analysis_cuts_a_segment_once_and_it_runs_the_same_in_every_partition():
    model = create("resnet20", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    analysis = partitioner.analyze(model, x)
    cuts = [c.boundary[0] for c, _ in analysis.cuts]
    first = analysis.split_at([cuts[2], cuts[5]])
    second = analysis.split_at([cuts[2], cuts[7]])
    # The segment before cuts[2] is the same graph in both; the ones after differ.
    assert first.segments[0]._graphs[True] is second.segments[0]._graphs[True]
    assert first.segments[1]._graphs[True] is not second.segments[1]._graphs[True]
    for part in (first, second):
        h = x
        for segment in part.train().segments:
            h = segment(h)
        torch.testing.assert_close(h, model.train()(x), rtol=0, atol=0)
