"""contsup.mixing: mixup/cutmix and label smoothing reach every local loss, repeatably."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

import contsup
from contsup.errors import ConfigError
from contsup.learner import LocalLearner
from contsup.mixing import TargetMixer, check_mixing, hard_labels
from contsup.trainer import TrainConfig, train
from tests.conftest import create

SMALL = TrainConfig(
    model="resnet20", k=3, dataset="digits", train_images=64, test_images=32, batch_size=32,
    lr=0.05, warmup_epochs=0, epochs=1, device="cpu", threads=1, tensorboard=False,
)  # fmt: skip


def soft_targets(n: int, classes: int) -> torch.Tensor:
    """Mixed-looking targets whose most probable class is not worth all the loss."""
    y = torch.randint(0, classes, (n,))
    return TargetMixer(classes, seed=0, mixup=0.8, cutmix=0.0, label_smoothing=0.1)(
        torch.randn(n, 3, 32, 32), y, step=0
    )[1]


def test_every_head_and_the_last_segment_are_scored_on_the_soft_targets():
    learner = contsup.wrap(create("resnet20", num_classes=10), k=3, context="R1E")
    learner.eval()  # batch norm on running statistics: a second pass sees the same numbers
    with torch.no_grad():  # confident scores, so soft and hard targets score far apart
        for module in [*learner.heads, learner.segments[-1]]:
            for linear in (m for m in module.modules() if isinstance(m, torch.nn.Linear)):
                linear.weight.mul_(30)
    x, soft = torch.randn(16, 3, 32, 32), soft_targets(16, 10)
    losses = learner.local_backward(x, soft).losses
    boundaries = {}
    with torch.no_grad():
        logits = learner.network(x, on_boundary=lambda j, h: boundaries.setdefault(j, h))
        scores = [learner.heads[j](boundaries[j]) for j in range(2)] + [logits]
    soft_loss = SoftTargetCrossEntropy()
    expected = [soft_loss(s, soft).item() for s in scores]
    hard = [F.cross_entropy(s, hard_labels(soft)).item() for s in scores]
    assert losses == pytest.approx(expected, rel=1e-5)
    for loss, with_hard_labels in zip(losses, hard):  # so a head on hard labels would show
        assert abs(loss - with_hard_labels) > 0.01


def test_a_run_with_mixup_gives_each_unit_soft_targets(monkeypatch, tmp_path):
    seen = []
    original = LocalLearner.local_units

    def spy(self, x, y, carry, start, stop, **kwargs):
        seen.append((x.clone(), y.clone(), start, stop))
        return original(self, x, y, carry, start, stop, **kwargs)

    monkeypatch.setattr(LocalLearner, "local_units", spy)
    train(replace(SMALL, out=str(tmp_path), mixup=0.8, cutmix=1.0, label_smoothing=0.1))
    assert seen and all(y.shape == (len(x), 10) and y.dtype == torch.float32
                        for x, y, _, _ in seen)  # fmt: skip
    assert all((start, stop) == (0, 3) for *_, start, stop in seen)  # one call, every unit
    assert all(torch.allclose(y.sum(1), torch.ones(len(y))) for _, y, _, _ in seen)
    assert any((y.max(1).values < 0.9).any() for _, y, _, _ in seen)  # mixed, not only smoothed


def test_the_same_seed_and_step_mix_the_same_way_and_leave_numpy_alone():
    mixer = TargetMixer(10, seed=3, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    x, y = torch.randn(9, 3, 8, 8), torch.randint(0, 10, (9,))  # odd: the last keeps its own
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = mixer(x.clone(), y, step=5)
    assert np.array_equal(np.random.get_state()[1], before)
    again = mixer(x.clone(), y, step=5)
    other = mixer(x.clone(), y, step=6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    assert torch.equal(first[0][-1], x[-1]) and first[1][-1].argmax() == y[-1]


def test_label_smoothing_alone_spreads_its_share_over_the_classes():
    mixer = TargetMixer(4, seed=0, mixup=0.0, cutmix=0.0, label_smoothing=0.2)
    x = torch.randn(2, 3, 4, 4)
    mixed, soft = mixer(x.clone(), torch.tensor([1, 3]), step=0)
    assert torch.equal(mixed, x)
    expected = torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]])
    assert torch.allclose(soft, expected)


@pytest.mark.parametrize(
    "mixup,cutmix,smoothing,local_loss,message",
    [
        (0.8, 0.0, 0.0, "contrast", "'contrast' local loss needs hard labels"),
        (0.0, 0.0, 0.1, "contrast", "needs hard labels"),
        (-1.0, 0.0, 0.0, "ce", "Beta alphas"),
        (0.0, 0.0, 1.0, "ce", "label_smoothing must be in"),
    ],
)
def test_mixing_a_run_cannot_use_is_one_sentence(mixup, cutmix, smoothing, local_loss, message):
    with pytest.raises(ConfigError, match=message):
        check_mixing(mixup, cutmix, smoothing, local_loss)
