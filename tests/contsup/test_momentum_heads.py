"""contsup.momentum_heads: shadows that follow the next segment, train nothing, and pass
gradients to their own segment only."""

import copy
from dataclasses import replace

import pytest
import torch

from contsup.errors import ConfigError
from contsup.learner import wrap
from contsup.momentum_heads import MomentumHead
from tests.conftest import create

X = torch.randn(4, 3, 32, 32)
Y = torch.tensor([0, 1, 2, 3])


def learners(momentum=0.9, k=4, context="R1E"):
    """The same model wrapped twice: plain heads and momentum heads (same backbone)."""
    torch.manual_seed(0)
    model = create("resnet20", num_classes=10)
    plain = wrap(model, k, context=context, example_input=X[:2])
    torch.manual_seed(0)
    model = create("resnet20", num_classes=10)
    momentum = wrap(model, k, context=context, example_input=X[:2], momentum_heads=momentum)
    return plain, momentum


def test_shadows_hold_no_parameters_and_start_as_the_next_segment():
    plain, learner = learners()
    assert all(isinstance(h, MomentumHead) for h in learner.heads)
    for j, head in enumerate(learner.heads):
        assert list(head.shadow.parameters()) == []
        live = dict(learner.segments[j + 1].named_parameters())
        shadow = dict(head.shadow.named_buffers())
        assert live.keys() <= shadow.keys()
        assert all(torch.equal(shadow[name], value) for name, value in live.items())
    # Every parameter is still in exactly one segment, head or bridge: shadows add none
    # but the heads at the next boundary; the last head is the classifier's logits.
    ids = [id(p) for p in learner.parameters()]
    assert len(ids) == len(set(ids))
    segment_params = sum(p.numel() for p in learner.segments.parameters())
    assert segment_params == sum(p.numel() for p in plain.segments.parameters())
    assert sum(p.numel() for p in learner.heads[-1].parameters()) == 0


def test_a_unit_trains_its_own_segment_and_head_not_the_next_segment():
    _, learner = learners()
    learner.train()
    from contsup.network import Carry

    carry = Carry(learner.context)
    learner.local_units(X, Y, carry, 0, 1)  # unit 0 only: its head reads segment 1's shadow
    assert all(p.grad is not None for p in learner.segments[0].parameters())
    assert all(p.grad is not None for p in learner.heads[0].parameters())
    assert all(p.grad is None for p in learner.segments[1].parameters())


def test_shadows_follow_the_live_weights_once_a_step_after_their_unit():
    _, learner = learners(momentum=0.9)
    learner.train()
    head, live = learner.heads[0], learner.segments[1]
    name, weight = next((n, p) for n, p in live.named_parameters() if p.ndim == 4)
    shadow = dict(head.shadow.named_buffers())
    with torch.no_grad():
        weight.add_(1.0)  # the weights segment 1 trains with in this step
    before = shadow[name].clone()
    head(torch.randn(2, *learner.segments[0](X[:2]).shape[1:]))
    assert torch.equal(shadow[name], before)  # a forward alone leaves the shadow
    learner.local_backward(X, Y)
    # The first follow's decay has warmed up to min(0.9, 1/10) only.
    torch.testing.assert_close(shadow[name], 0.1 * before + 0.9 * weight, rtol=0, atol=1e-6)
    for _ in range(200):  # after n follows: min(0.9, (1 + n) / (10 + n)), here 0.9
        head.follow()
    expected = shadow[name].clone().lerp_(weight + 1.0, 0.1)
    with torch.no_grad():
        weight.add_(1.0)
    head.follow()
    torch.testing.assert_close(shadow[name], expected, rtol=0, atol=1e-6)


def test_shadows_keep_batchnorm_statistics_of_what_they_read():
    """Under R1E the live segment reads the previous output plus context, its shadow the
    output alone: the shadow's statistics are its own, from its forward, not copied."""
    _, learner = learners(momentum=0.9)
    learner.train()
    head, live = learner.heads[0], learner.segments[1]
    statistic = next(n for n, _ in live.named_buffers() if n.endswith("running_mean"))
    out = learner.segments[0](X)
    reference = copy.deepcopy(head.shadow)  # what the shadow's statistics become from `out`
    with torch.no_grad():
        reference(out)
    learner.local_backward(X, Y)  # unit 0's head reads the same `out`, then follows
    ours = dict(head.shadow.named_buffers())[statistic]
    assert torch.equal(ours, dict(reference.named_buffers())[statistic])
    assert not torch.equal(ours, dict(live.named_buffers())[statistic])
    head.follow()
    assert torch.equal(ours, dict(reference.named_buffers())[statistic])


def test_the_model_itself_is_unchanged_bitwise():
    plain, learner = learners()
    plain.eval(), learner.eval()
    with torch.no_grad():
        assert torch.equal(plain(X), learner(X))


def test_local_backward_steps_and_the_state_dict_round_trips():
    _, learner = learners(k=3)
    learner.train()
    step = learner.local_backward(X, Y)
    assert len(step.losses) == 3 and all(torch.isfinite(torch.tensor(step.losses)))
    _, other = learners(k=3)
    other.load_state_dict(learner.state_dict())
    for a, b in zip(learner.heads, other.heads, strict=True):
        for (n, x), (_, y) in zip(a.shadow.named_buffers(), b.shadow.named_buffers(), strict=True):
            assert torch.equal(x, y), n


@pytest.mark.parametrize("momentum", [-0.1, 1.0])
def test_a_decay_outside_0_1_is_one_sentence(momentum):
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        learners(momentum=momentum)


def test_the_contrastive_loss_is_refused():
    model = create("resnet20", num_classes=10)
    with pytest.raises(ConfigError, match="ce local loss"):
        wrap(model, 3, example_input=X[:2], local_loss="contrast", momentum_heads=0.99)


def test_a_run_with_momentum_heads_learns_digits(tmp_path):
    from contsup.trainer import TrainConfig, train

    config = TrainConfig(
        model="resnet20", k=2, context="R1E", dataset="digits", batch_size=128, lr=0.1,
        epochs=3, warmup_epochs=0, device="cpu", threads=1, momentum_heads=0.9,
        out=str(tmp_path), tensorboard=False,
    )  # fmt: skip
    # It learns (chance is 0.1; 0.80 measured): the shadow passes segment 0 a signal.
    assert train(config)["test_accuracy"] >= 0.6


def test_compiled_momentum_heads_give_the_eager_losses():
    def losses(compiled: bool) -> list[list[float]]:
        _, learner = learners(momentum=0.9, k=3)
        learner.train()
        if compiled:
            learner.compile_units()
        optimizer = torch.optim.SGD(learner.parameters(), lr=0.1)
        out = []
        for _ in range(2):
            optimizer.zero_grad()
            out.append(learner.local_backward(X, Y).losses)
            optimizer.step()
        return out

    eager, compiled = losses(False), losses(True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_the_planner_prices_the_shadows():
    from contsup.memory_plan import BudgetTooSmallError, plan, predict_run
    from contsup.trainer import TrainConfig

    def planned(momentum, memory):
        options = dict(batch_size=64, input_size=(3, 32, 32), context="R1E", device="cpu")
        return plan("resnet20", memory=memory, momentum_heads=momentum, **options)

    budget = int(0.9 * planned(None, "8GiB").end_to_end.total)  # local learning must cut
    plain, shadowed = planned(None, budget), planned(0.99, budget)
    # The shadows need more memory: more segments fit the same budget (K=2, K=3).
    assert 2 <= plain.k < shadowed.k and shadowed.peak.total <= budget
    assert (plain.momentum_heads, shadowed.momentum_heads) == (None, 0.99)
    # Where only plain heads fit, the refusal says so.
    with pytest.raises(BudgetTooSmallError) as refused:
        planned(None, planned(None, "8GiB").floor_bytes + 1)
    assert "--momentum-heads" not in str(refused.value)
    least_plain = refused.value.least_bytes
    assert planned(None, least_plain).peak.total == least_plain
    with pytest.raises(BudgetTooSmallError, match=r"plain heads \(--momentum-heads off\)"):
        planned("auto", least_plain)
    # At the same cuts each unit also runs the next segment's shadow and saves its
    # activations, and the shadows' weights are held beside the optimizer's.
    config = TrainConfig(model="resnet20", k=4, context="R1E", dataset="digits")
    without = predict_run(replace(config, momentum_heads="off"))
    with_shadows = predict_run(config)  # the default's, at this size
    assert with_shadows.total > without.total
    assert with_shadows.static > without.static


@pytest.mark.parametrize(
    "options,message",
    [(["--momentum-heads", "1.5"], "in [0, 1)")],
)
def test_the_command_line_refuses_in_one_sentence(tmp_path, options, message):
    from typer.testing import CliRunner

    from contsup.cli import app

    args = ["train", "resnet20", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args + options)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
