"""contsup.live_bytes: the bytes a run holds, op by op, even on the meta device."""

import torch
import torch.nn.functional as F
from torch import nn

from contsup.live_bytes import LiveBytes

ACT = 8 * 64 * 32 * 32 * 4  # one activation of the conv below


def test_a_step_holds_what_is_alive_and_backward_frees_what_it_has_read():
    w = nn.Parameter(torch.empty(64, 3, 3, 3, device="meta"))
    x = torch.empty(8, 3, 32, 32, device="meta")
    with LiveBytes() as live:
        h = torch.relu(F.conv2d(x, w, padding=1))  # the conv's output dies once relu ran
        relu = live.record_of(h)
        loss = (h * 2).sum()  # the product dies once summed
        del h
        assert live.current == ACT + 4 and live.peak == 2 * ACT + 4
        loss.backward()
    assert relu.saved and relu.freed < float("inf")  # backward read it, then let it go
    # At backward's peak: relu's output, the product's gradient and relu's, the loss
    # and its gradient; after it, the loss and the weight's gradient.
    assert live.peak == 3 * ACT + 8
    assert sum(s.nbytes for s in live.at_peak()) == live.peak
    assert live.current == 4 + w.grad.numel() * 4


def test_a_kernels_scratch_counts_at_its_op_only():
    def scratch(func, args, out):
        return 1000 if func is torch.ops.aten.relu.default else 0

    with LiveBytes(scratch) as live:
        a = torch.empty(1000, device="meta")
        b = torch.relu(a)
        assert (live.peak, live.peak_scratch) == (8000 + 1000, 1000)
        c = a * 2
        assert (live.peak, live.peak_scratch) == (12000, 0)
        assert len(live.at_peak()) == 3
    del b, c


def test_real_tensors_are_counted_too():
    with LiveBytes() as live:
        a = torch.ones(256)
        b = a + 1
        del a
    assert live.peak == 2 * 1024 and live.current == 1024
    assert b.sum().item() == 512
