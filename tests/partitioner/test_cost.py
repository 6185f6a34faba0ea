"""partitioner.cost: FLOPs, saved bytes and parameters per node."""

import torch
from torch import nn

from partitioner.cost import measure_node_times, profile
from partitioner.trace import trace


def costs_of(model, x):
    gm = trace(model, training=True)
    return profile(gm, x).costs


def test_linear_relu_linear_by_hand():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    costs = costs_of(model, torch.randn(3, 4))
    # addmm: 2 * batch * in * out FLOPs
    assert costs["_0"].flops == 2 * 3 * 4 * 8
    assert costs["_2"].flops == 2 * 3 * 8 * 2
    assert costs["_1"].flops == 0
    # The first Linear keeps its input for the weight gradient (3 x 4 floats); the
    # weight itself is a parameter and is not an activation.
    assert costs["_0"].saved_bytes == 3 * 4 * 4
    # ReLU keeps its output; the second Linear keeps the same tensor, charged once.
    assert costs["_1"].saved_bytes == 3 * 8 * 4
    assert costs["_2"].saved_bytes == 0
    assert costs["_0"].param_bytes == (4 * 8 + 8) * 4
    assert costs["_2"].param_bytes == (8 * 2 + 2) * 4


def test_conv_flops_and_batch_scaling():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    one = costs_of(model, torch.randn(1, 3, 8, 8))["_0"]
    four = costs_of(model, torch.randn(4, 3, 8, 8))["_0"]
    assert one.flops == 2 * (8 * 8 * 8) * (3 * 3 * 3)
    assert four.flops == 4 * one.flops
    assert four.saved_bytes == 4 * one.saved_bytes == 4 * 3 * 8 * 8 * 4


def test_profiling_leaves_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    costs_of(model, torch.randn(2, 3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_node_times_cover_every_node_and_restore_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    gm = trace(model, training=True)
    before = model[1].running_mean.clone()
    times = measure_node_times(gm, torch.randn(2, 3, 16, 16), repeats=2)
    assert set(times) == {n.name for n in gm.graph.nodes}
    assert all(t >= 0 for t in times.values()) and times["_0"] > 0
    assert torch.equal(model[1].running_mean, before)


def test_saved_across_tells_which_sides_of_a_cut_save_the_boundary():
    import partitioner

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3))
    analysis = partitioner.analyze(model, torch.randn(2, 3, 8, 8))
    by_node = {cut.boundary: analysis.boundary(cut) for cut, _ in analysis.cuts}
    nbytes = 2 * 4 * 6 * 6 * 4
    # The conv's output is saved only by the batch norm after the cut: charged there.
    assert analysis.saved_across(by_node[("_0",)]) == (0, nbytes)
    # The ReLU saves its output and the next conv its input: a segment run on its
    # own saves its copy, which the profile (one charge per storage) does not count.
    assert analysis.saved_across(by_node[("_2",)]) == (nbytes, nbytes)
    # The batch norm's output is saved by nobody but the ReLU (its own output).
    assert analysis.saved_across(by_node[("_1",)]) == (0, 0)
