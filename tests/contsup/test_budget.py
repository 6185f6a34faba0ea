"""contsup.budget: what heads and bridges cost, measured on the meta device."""

import math

import pytest
import timm
import torch

import partitioner
from contsup.auxiliary import AuxConfig, BoundaryTooNarrowError
from contsup.bench import predict_local_steps
from contsup.budget import (
    STATIC_COPIES,
    AuxCost,
    aux_budget,
    aux_costs,
    balance_hook,
    balanced_partition,
    extra_cost_hook,
)
from contsup.context import parse_context
from contsup.geometry import Geometry
from contsup.learner import wrap
from contsup.momentum_heads import shadows
from partitioner.objectives import segment_extras
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


def test_the_balance_hook_prices_each_cut_by_its_geometry_and_refuses_unusable_cuts():
    model = create("resnet20")
    calls = []

    def cost_at(target, boundary):
        calls.append((target, boundary))
        return AuxCost(flops=5), AuxCost(flops=7)

    hook = extra_cost_hook(model, "flops", cost_at)
    analysis = partitioner.analyze(model, torch.randn(2, 3, 32, 32))
    single = [analysis.boundary(cut) for cut, _ in analysis.cuts]
    assert all(hook(b) == (5, 7) for b in single)
    assert [b for _, b in calls] == single
    assert all(g.channels == b.shape[1] for g, b in calls)
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

    def narrow(target, boundary):
        raise BoundaryTooNarrowError("a boundary of 2 channels cannot take 3 context sources")

    def broken(target, boundary):
        raise ValueError("a bug in a bridge builder")

    assert extra_cost_hook(model, "flops", narrow)(boundary) == (math.inf, math.inf)
    with pytest.raises(ValueError, match="a bug"):
        extra_cost_hook(model, "flops", broken)(boundary)


def _meta_timm(name, size, batch=8):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    return model, torch.empty(batch, 3, size, size, device="meta")


def _aux_param_bytes(learner, k):
    modules = [learner.heads[k]] if k < len(learner.heads) else []
    modules += [learner.bridges[k - 1]] if k else []
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


@pytest.mark.parametrize("name, size", [("mobilenetv3_small_050", 96), ("resnet18", 64)])
@pytest.mark.parametrize("mode", ["R0", "R1E"])
def test_the_balance_prices_each_unit_as_a_step_saves_it(name, size, mode):
    # A unit runs on its own: a boundary saved on both sides of a cut is saved twice,
    # and a head may save the output its segment does not. Priced per unit (with the
    # aux modules' parameters, which the balance charges to their cut), the balance
    # must see what a step of that unit saves, or it picks the wrong cuts.
    model, x = _meta_timm(name, size)
    learner = wrap(model, 5, example_input=x, context=mode, objective="memory", momentum_heads=None)
    part = learner.partition
    priced = [s.activation_bytes + e for s, e in zip(part.stats, part.extra_costs)]
    y = torch.zeros(len(x), dtype=torch.long, device="meta")
    steps = predict_local_steps(learner, x, y)
    for k in range(learner.k - 1):  # the last segment's head is the model's own
        measured = steps[k] + STATIC_COPIES * _aux_param_bytes(learner, k)
        assert priced[k] == pytest.approx(measured, rel=0.01), k


def test_rebalancing_with_the_chosen_sources_lowers_the_peak():
    # Priced as if each Rn encoder read its own boundary's shape, a wide boundary's
    # bridge looks costlier than it is when the boundary before is narrower (here
    # contsup 0.2's encoders, on the boundary's full grid: the cost follows the source).
    model, x = _meta_timm("efficientnet_b0", 96)
    analysis = partitioner.analyze(model, x)
    config = wrap(model, 2, example_input=x, context="R1E", aux="scaled-0.2").aux_config
    first = analysis.partition(8, "memory", extra_cost=balance_hook(analysis, "memory", config))
    best = balanced_partition(analysis, 8, "memory", config)

    def peak(part):
        own = balance_hook(analysis, "memory", config, chosen=part.boundaries)
        extras = segment_extras([own(b) for b in part.boundaries])
        return max(s.activation_bytes + e for s, e in zip(part.stats, extras)), extras

    assert peak(best)[1] == best.extra_costs  # priced at its own cuts
    assert peak(best)[0] < 0.99 * peak(first)[0]
