"""contsup.schedule: the learning-rate schedules."""

import math

import pytest

from contsup.schedule import ScheduleError, cosine_lr, paper_lr, schedule, warmup_epochs


def test_paper_schedule():
    assert paper_lr(1, 160, 0.8) == pytest.approx(0.01)
    assert paper_lr(11, 160, 0.8) == pytest.approx(0.4 * (1 + math.cos(math.pi * 11 / 160)))
    assert paper_lr(160, 160, 0.8) == pytest.approx(0.0, abs=1e-12)
    warm = [paper_lr(e, 160, 0.8) for e in range(1, 11)]
    assert warm == sorted(warm)  # warm-up rises
    cool = [paper_lr(e, 160, 0.8) for e in range(11, 161)]
    assert cool == sorted(cool, reverse=True)
    assert paper_lr(1, 5, 0.1, warmup_epochs=0) == pytest.approx(0.05 * (1 + math.cos(math.pi / 5)))


def test_paper_schedule_by_name_is_constant_within_an_epoch():
    lr_at = schedule("paper", lr=0.8, epochs=160, steps_per_epoch=49, warmup_epochs=10)
    assert lr_at(0) == lr_at(48) == pytest.approx(0.01)
    assert lr_at(49) == pytest.approx(paper_lr(2, 160, 0.8))


@pytest.mark.parametrize("epochs", [1, 4, 160])
def test_default_schedule_never_spends_a_step_at_lr_zero(epochs):
    steps = 7
    lr_at = schedule(
        "cosine", lr=0.1, epochs=epochs, steps_per_epoch=steps,
        warmup_epochs=warmup_epochs(None, epochs),
    )  # fmt: skip
    rates = [lr_at(s) for s in range(epochs * steps)]
    assert min(rates) > 0
    assert max(rates) <= 0.1
    peak = rates.index(max(rates))
    assert rates[: peak + 1] == sorted(rates[: peak + 1])  # warm-up rises
    assert rates[peak:] == sorted(rates[peak:], reverse=True)  # then decays


def test_warmup_scales_with_lr():
    low = schedule("cosine", lr=0.002, epochs=1, steps_per_epoch=10, warmup_epochs=0.5)
    high = schedule("cosine", lr=0.2, epochs=1, steps_per_epoch=10, warmup_epochs=0.5)
    assert low(0) == pytest.approx(0.002 / 10)
    assert [high(s) / low(s) for s in range(10)] == pytest.approx([100] * 10)


def test_cosine_without_warmup_starts_near_the_peak_and_ends_above_zero():
    assert cosine_lr(0, 100, 1.0, 0) > 0.99
    assert 0 < cosine_lr(99, 100, 1.0, 0) < 0.001


def test_bad_schedules_are_user_errors():
    with pytest.raises(ScheduleError, match="unknown schedule"):
        schedule("step", lr=0.1, epochs=2, steps_per_epoch=3, warmup_epochs=0)
    with pytest.raises(ScheduleError, match="shorter than the run"):
        warmup_epochs(4, 4)
    with pytest.raises(ScheduleError, match="at least 0"):
        warmup_epochs(-1, 4)


@pytest.mark.parametrize("name", ["cosine", "tanh", "poly"])
def test_timm_schedules_are_timms_per_step_curve_and_a_function_of_the_step(name):
    import torch
    from timm.scheduler import create_scheduler_v2

    lr_at = schedule(f"timm:{name}", lr=0.5, epochs=3, steps_per_epoch=7, warmup_epochs=1)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    timms, _ = create_scheduler_v2(
        optimizer, sched=name, num_epochs=3, warmup_epochs=1, step_on_epochs=False,
        updates_per_epoch=7,
    )  # fmt: skip
    expected = []
    for step in range(21):
        timms.step_update(step)
        expected.append(optimizer.param_groups[0]["lr"])
    assert [lr_at(s) for s in range(21)] == expected
    assert expected[0] == 1e-5 and max(expected) > 0.4  # timm's warm-up, then its peak
    assert [lr_at(s) for s in reversed(range(21))] == expected[::-1]  # as a resume asks
