"""contsup.meta_ops: meta-device ops run once per input signature."""

import timm
import torch
import torch.nn.functional as F
from torch import nn

import contsup
from contsup.meta_ops import MemoizedMetaOps
from contsup.peak import predict_step


def test_a_remembered_op_returns_what_the_op_itself_returns():
    bn = nn.BatchNorm2d(8).to("meta")
    x = torch.empty(4, 8, 5, 5, device="meta").to(memory_format=torch.channels_last)
    first = bn(x)
    with MemoizedMetaOps():
        runs = [bn(x), bn(x)]  # the second is the remembered one
        linear = [F.linear(torch.empty(3, 4, device="meta"), torch.empty(6, 4, device="meta"))]
        linear.append(F.linear(torch.empty(3, 4, device="meta"), torch.empty(6, 4, device="meta")))
    for out in [*runs, linear[1]]:
        model = first if out.dim() == 4 else linear[0]
        assert (out.shape, out.stride(), out.dtype) == (model.shape, model.stride(), model.dtype)
    assert runs[0].untyped_storage()._cdata != runs[1].untyped_storage()._cdata  # fresh


def test_real_tensors_views_and_factories_run_as_usual():
    with MemoizedMetaOps():
        real = torch.ones(3) + torch.ones(3)
        view = torch.empty(4, 6, device="meta").t()
        again = torch.empty(4, 6, device="meta").t()
        made = torch.zeros(2, device="cpu")
    assert real.tolist() == [2.0, 2.0, 2.0]
    assert view.shape == again.shape == (6, 4) and view.stride() == (1, 6)
    assert made.device.type == "cpu"


def test_a_predicted_step_is_the_same_with_ops_remembered():
    model = timm.create_model("resnet20", num_classes=10).to("meta")
    x = torch.empty(8, 3, 32, 32, device="meta")
    y = torch.zeros(8, dtype=torch.long, device="meta")
    learner = contsup.wrap(model, 3, context="R1E", example_input=x)
    with_memo = [predict_step(learner, x, y) for _ in range(2)]
    import contsup.peak as peak

    plain_mode, peak.MemoizedMetaOps = peak.MemoizedMetaOps, _NoMemo
    try:
        plain = predict_step(learner, x, y)
    finally:
        peak.MemoizedMetaOps = plain_mode
    assert with_memo[0] == with_memo[1] == plain


class _NoMemo:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
