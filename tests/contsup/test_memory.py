"""contsup.memory: bytes saved for backward."""

import torch
from torch import nn

from contsup.memory import SavedTensorTracker


def test_tracker_matches_hand_computed_saved_bytes():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    with SavedTensorTracker(model.parameters()) as tracker:
        out = model(x)
        # Linear saves its input (3x4 floats) for the weight gradient; ReLU saves its
        # output (3x8), which the second Linear saves again: one storage, counted once.
        assert tracker.current_bytes == 3 * 4 * 4 + 3 * 8 * 4
        out.sum().backward()
    assert tracker.peak_bytes == 3 * 4 * 4 + 3 * 8 * 4
    assert tracker.current_bytes == 0  # backward let go of everything


def test_parameters_are_not_activations_unless_asked():
    model = nn.Linear(16, 16, bias=False)
    x = torch.randn(2, 16, requires_grad=True)
    with SavedTensorTracker() as everything:
        model(x).sum().backward()
    with SavedTensorTracker(model.parameters()) as activations:
        model(x).sum().backward()
    assert everything.peak_bytes - activations.peak_bytes == 16 * 16 * 4


def test_dropping_the_output_releases_without_backward():
    conv = nn.Conv2d(3, 4, 3)
    with SavedTensorTracker(conv.parameters()) as tracker:
        out = conv(torch.randn(2, 3, 8, 8))
        assert tracker.current_bytes == 2 * 3 * 8 * 8 * 4
        del out
        assert tracker.current_bytes == 0


def test_a_forward_only_walk_lets_go_of_a_graph_that_saved_its_own_output():
    # ReLU saves its output: a tracker holding that tensor would hold the graph that
    # holds the tracker's holder, a cycle through autograd that never dies.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU()).to("meta")
    x = torch.empty(3, 4, device="meta")
    seen = {}
    for forward_only in (False, True):
        with SavedTensorTracker(model.parameters(), forward_only=forward_only) as tracker:
            model(x)  # the output is dropped at once
        seen[forward_only] = tracker
    assert seen[True].peak_bytes == seen[False].peak_bytes == 3 * 4 * 4 + 3 * 8 * 4
    assert seen[True].current_bytes == 0
