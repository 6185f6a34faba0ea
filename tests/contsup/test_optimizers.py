"""contsup.optimizers: the paper's SGD unchanged, timm's by name with decay off for norms."""

import pytest
import torch
from timm.optim import Lamb

import contsup
from contsup.errors import ConfigError
from contsup.optimizers import check_optimizer, make_optimizer
from tests.conftest import create

SETTINGS = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)


def test_sgd_is_the_papers_one_group_with_decay_on_every_weight():
    learner = contsup.wrap(create("resnet20", num_classes=10), k=2)
    optimizer = make_optimizer("sgd", list(learner.named_parameters()), **SETTINGS)
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    (group,) = optimizer.param_groups
    assert group["nesterov"] and group["weight_decay"] == 0.05
    assert len(group["params"]) == len(list(learner.parameters()))


@pytest.mark.parametrize("name,kind", [("adamw", torch.optim.AdamW), ("lamb", Lamb)])
def test_timm_optimizers_leave_biases_and_norms_undecayed(name, kind):
    learner = contsup.wrap(create("resnet20", num_classes=10), k=2, context="R1E")
    named = list(learner.named_parameters())
    optimizer = make_optimizer(name, named, **SETTINGS)
    assert isinstance(optimizer, kind)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(decay) == len(named)  # every parameter, once
    for param_name, param in named:
        one_dimensional = param.ndim == 1  # biases and batch-norm weights
        assert decay[id(param)] == (0.0 if one_dimensional else 0.05), param_name
    assert {0.0, 0.05} == set(decay.values())


@pytest.mark.parametrize("name", ["adamx", "Adam W", ""])
def test_an_unknown_optimizer_is_one_sentence(name):
    with pytest.raises(ConfigError, match=f"unknown optimizer '{name}'.*timm.optim"):
        check_optimizer(name)


def test_a_vits_position_embedding_and_class_token_are_not_decayed_as_in_timm():
    model = create("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)
    learner = contsup.wrap(model, k=2, context="R1E", example_input=torch.zeros(2, 3, 32, 32))
    assert learner.no_weight_decay() == {
        "network.segments.0.pos_embed",
        "network.segments.0.cls_token",
    }
    optimizer = make_optimizer(
        "adamw", list(learner.named_parameters()), **SETTINGS,
        no_weight_decay=learner.no_weight_decay(),
    )  # fmt: skip
    undecayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(model.pos_embed) in undecayed and id(model.cls_token) in undecayed
    assert id(model.patch_embed.proj.weight) not in undecayed


def test_lamb_does_not_clip_by_a_norm_over_every_segment():
    """A global norm would couple the segments and differ between a pipeline and one process."""
    learner = contsup.wrap(create("resnet20", num_classes=10), k=2)
    optimizer = make_optimizer("lamb", list(learner.named_parameters()), **SETTINGS)
    assert optimizer.defaults["max_grad_norm"] is None
    assert "max_grad_norm" not in make_optimizer("adamw", list(learner.named_parameters()),
                                                 **SETTINGS).defaults  # fmt: skip


@pytest.mark.parametrize("name", ["sgd", "adamw", "nesterov"])
def test_torchs_optimizers_step_fused_with_the_loops_values(name):
    """One fused kernel per step, not a loop over tensors: the loop's values to rounding."""
    learner = contsup.wrap(create("resnet20", num_classes=10), k=2, context="R1E")
    named = list(learner.named_parameters())
    for p in learner.parameters():
        p.grad = torch.randn_like(p)
    fused = make_optimizer(name, named, **SETTINGS)
    assert all(group["fused"] for group in fused.param_groups)
    start = [p.detach().clone() for p in learner.parameters()]
    for _ in range(3):
        fused.step()
    after = [p.detach().clone() for p in learner.parameters()]
    with torch.no_grad():
        for p, value in zip(learner.parameters(), start):
            p.copy_(value)
    groups = [
        {k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in fused.param_groups
    ]
    loop = type(fused)(groups, fused=False, foreach=False)
    for _ in range(3):
        loop.step()
    for p, value in zip(learner.parameters(), after):
        torch.testing.assert_close(p, value)
