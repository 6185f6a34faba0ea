"""contsup.budget: what heads and bridges cost, measured on the meta device."""

import math

import pytest
import torch

import partitioner
from contsup.auxiliary import AuxConfig, BoundaryTooNarrowError
from contsup.budget import STATIC_COPIES, AuxCost, aux_budget, aux_costs, extra_cost_hook
from contsup.context import parse_context
from contsup.geometry import Geometry
from contsup.learner import wrap
from contsup.momentum_heads import shadows
from tests.conftest import create

IMAGE = Geometry("NCHW", 3, 32, 32)
BOUNDARY = Geometry("NCHW", 16, 8, 8)


def _config(design="paper", mode="R1"):
    return AuxConfig(design, parse_context(mode), "1c2f", 10, 64, IMAGE)


def test_aux_cost_adds_halves_and_converts_to_each_objective():
    cost = AuxCost(params=10, param_bytes=40, flops=100, saved_bytes=1000)
    assert cost + cost == AuxCost(20, 80, 200, 2000)
    assert cost.halved() == AuxCost(10, 40, 50, 500)
    assert cost.under("flops") == 100 and cost.under("params") == 40
    assert cost.under("memory") == 1000 + STATIC_COPIES * 40
    assert cost.under("time") == 0.0


def test_costs_count_the_modules_parameters_and_scale_with_the_batch():
    config = _config()
    head, bridge = aux_costs(config, BOUNDARY, [BOUNDARY], batch=4)
    built_head, _, built_bridge = config.modules_at(BOUNDARY, [BOUNDARY])
    assert head.params == sum(p.numel() for p in built_head.parameters())
    # The paper's R1 encoder: Conv1x1(16 -> 16, bias) and a BatchNorm of 16.
    assert bridge.params == sum(p.numel() for p in built_bridge.parameters()) == 272 + 32
    assert bridge.param_bytes == 4 * bridge.params
    # A 1x1 conv of 16 -> 16 on 8x8 is 16 * 16 * 64 multiply-adds a sample, at least.
    assert bridge.flops >= 4 * 2 * 16 * 16 * 64
    double_head, double_bridge = aux_costs(config, BOUNDARY, [BOUNDARY], batch=8)
    assert (double_head.flops, double_bridge.flops) == (2 * head.flops, 2 * bridge.flops)
    # Four more samples save at least the conv's input of each (fp32, 16 x 8 x 8).
    assert double_bridge.saved_bytes - bridge.saved_bytes >= 4 * 16 * 8 * 8 * 4
    assert aux_costs(config, BOUNDARY, [BOUNDARY], batch=1) == tuple(
        c.halved() for c in aux_costs(config, BOUNDARY, [BOUNDARY], batch=2)
    )


def test_a_head_does_not_count_the_boundary_the_segment_already_holds():
    # 0c1f is GAP -> Linear: it saves nothing of the boundary's size for backward.
    config = AuxConfig("scaled", parse_context("R0"), "0c1f", 10, 64, IMAGE)
    head, bridge = aux_costs(config, BOUNDARY, [], batch=4)
    assert head.saved_bytes < 4 * 16 * 8 * 8 * 4
    assert bridge == AuxCost()


def test_the_balance_hook_prices_each_shape_once_and_refuses_unusable_cuts():
    model = create("resnet20")
    calls = []

    def cost_at(target):
        calls.append(target)
        return AuxCost(flops=5), AuxCost(flops=7)

    hook = extra_cost_hook(model, "flops", cost_at)
    analysis = partitioner.analyze(model, torch.randn(2, 3, 32, 32))
    single = [analysis.boundary(cut) for cut, _ in analysis.cuts]
    assert all(hook(b) == (5, 7) for b in single)
    assert len(calls) == len(set(calls)) < len(single)
    multi = partitioner.Boundary(tensors=single[0].tensors * 2)
    assert hook(multi) == (math.inf, math.inf)


@pytest.mark.parametrize("momentum", [None, "auto"])
@pytest.mark.parametrize("mode", ["R0", "R1E"])
def test_budget_has_a_head_and_a_bridge_per_segment_where_they_exist(mode, momentum):
    learner = wrap(create("resnet20"), 3, context=mode, momentum_heads=momentum)
    shadowed = bool(shadows(learner))
    assert shadowed == (momentum == "auto")  # the default's, on a CIFAR ResNet
    stats = learner.partition.stats
    budget = aux_budget(learner.aux_config, learner.geometries, stats, 2, shadowed)
    assert len(budget.heads) == len(budget.bridges) == len(budget.backbone) == 3
    assert budget.heads[-1] == AuxCost() and budget.bridges[0] == AuxCost()
    # A momentum head's last borrows the classifier: a shadow, no head of its own.
    assert all(h.params > 0 for h in budget.heads[: -2 if shadowed else -1])
    assert all((b.params > 0) == (mode != "R0") for b in budget.bridges[1:])
    aux = sum(p.numel() for m in (learner.heads, learner.bridges) for p in m.parameters())
    backbone = sum(p.numel() for p in learner.segments.parameters())
    assert budget.fractions()["params"] == pytest.approx(aux / backbone)
    if shadowed:  # head j also runs segment j+1's shadow: its FLOPs, no parameters
        plain = aux_budget(learner.aux_config, learner.geometries, stats, 2)
        assert budget.heads[-2].flops == stats[-1].flops  # the last borrows the classifier
        assert budget.heads[0].flops == stats[1].flops + plain.heads[1].flops


def test_only_an_unusable_boundary_costs_infinity_a_bug_raises():
    model = create("resnet20")
    analysis = partitioner.analyze(model, torch.randn(2, 3, 32, 32))
    boundary = analysis.boundary(analysis.cuts[0][0])

    def narrow(target):
        raise BoundaryTooNarrowError("a boundary of 2 channels cannot take 3 context sources")

    def broken(target):
        raise ValueError("a bug in a bridge builder")

    assert extra_cost_hook(model, "flops", narrow)(boundary) == (math.inf, math.inf)
    with pytest.raises(ValueError, match="a bug"):
        extra_cost_hook(model, "flops", broken)(boundary)
