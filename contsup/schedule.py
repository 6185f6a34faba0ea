"""Learning-rate schedules, evaluated per optimizer step.

Two by name:

* ``cosine`` (the default): a linear warm-up from a small fraction of the peak
  ``lr`` to ``lr``, then cosine decay. Every step is evaluated at its midpoint,
  so no step runs at lr 0 and a one-epoch run still trains.
* ``paper``: the reference's per-epoch curve (docs/paper.md, "Training setup"): a
  warm-up that starts at 0.01 whatever the peak, and a cosine that reaches 0 at
  the last epoch. The paper recipes use it to reproduce the tables.

And timm's, as ``timm:NAME`` (``timm:cosine``, ``timm:tanh``, ``timm:poly``): the
scheduler ``timm.scheduler.create_scheduler_v2`` makes, stepped per optimizer step
(timm's ``sched_on_updates``), with its warm-up from timm's ``warmup_lr`` (1e-5) and
its ``min_lr`` (0). A timm scheduler's lr is a function of the step number alone, so a
resumed run continues it exactly.

Example::

    lr_at = schedule("cosine", lr=0.1, epochs=4, steps_per_epoch=70, warmup_epochs=0.25)
    lr_at(0), lr_at(279)   # first and last step: both above 0
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from contsup.errors import ContsupError

__all__ = [
    "SCHEDULES",
    "ScheduleError",
    "check_schedule",
    "cosine_lr",
    "paper_lr",
    "schedule",
    "timm_schedule",
    "warmup_epochs",
]

SCHEDULES = ("cosine", "paper", "timm:cosine", "timm:tanh", "timm:poly")
WARMUP_SHARE = 1 / 16  # the paper's 10 warm-up epochs of 160


class ScheduleError(ContsupError):
    """A schedule that cannot be run (unknown name, warm-up as long as the run)."""


def warmup_epochs(warmup: float | None, epochs: int) -> float:
    """The warm-up length in epochs: ``warmup``, or by default a sixteenth of the run
    (the paper's 10 of 160).

    Example::

        >>> warmup_epochs(None, 160), warmup_epochs(None, 4), warmup_epochs(0, 4)
        (10.0, 0.25, 0)
    """
    if warmup is None:
        return epochs * WARMUP_SHARE
    if warmup < 0 or (warmup and warmup >= epochs):
        raise ScheduleError(
            f"--warmup-epochs must be at least 0 and shorter than the run ({epochs} epochs), "
            f"got {warmup}"
        )
    return warmup


def paper_lr(epoch: int, epochs: int, lr: float, warmup_epochs: float = 10) -> float:
    """The paper's cosine schedule with warm-up, for epoch ``epoch`` in 1..epochs.

    Example::

        >>> round(paper_lr(1, 160, 0.8), 4), round(paper_lr(11, 160, 0.8), 4)
        (0.01, 0.7907)

    For e <= W: 0.5 lr (1 + cos(pi e / E)) (e - 1) / W + 0.01 (W + 1 - e) / W;
    after: 0.5 lr (1 + cos(pi e / E)). The paper uses W = 10. It reaches 0 at the
    last epoch, which then trains nothing: fine for 160 epochs, not for short runs.
    """
    cosine = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    if epoch <= warmup_epochs:
        return (
            cosine * (epoch - 1) / warmup_epochs
            + 0.01 * (warmup_epochs + 1 - epoch) / warmup_epochs
        )
    return cosine


def cosine_lr(step: int, steps: int, lr: float, warmup_steps: int) -> float:
    """Step ``step`` (0-based) of ``steps``: linear warm-up, then cosine, at step midpoints.

    Example::

        >>> [round(cosine_lr(s, 4, 1.0, 0), 3) for s in range(4)]
        [0.962, 0.691, 0.309, 0.038]
        >>> [round(cosine_lr(s, 4, 1.0, 2), 3) for s in range(4)]
        [0.25, 0.75, 0.854, 0.146]

    The warm-up starts at ``lr / (2 warmup_steps)``: it scales with ``lr``.
    """
    if step < warmup_steps:
        return lr * (step + 0.5) / warmup_steps
    progress = (step - warmup_steps + 0.5) / (steps - warmup_steps)
    return 0.5 * lr * (1 + math.cos(math.pi * progress))


def schedule(
    name: str, *, lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float
) -> Callable[[int], float]:
    """The lr of each global step (0-based) of a run, by schedule name.

    Example::

        lr_at = schedule("paper", lr=0.8, epochs=160, steps_per_epoch=49, warmup_epochs=10)
        lr_at(0)   # 0.01: the paper's first epoch

    ``paper`` is constant within an epoch, as the reference sets it per epoch.
    """
    if name == "paper":
        return lambda step: paper_lr(step // steps_per_epoch + 1, epochs, lr, warmup_epochs)
    if name == "cosine":
        steps = epochs * steps_per_epoch
        warmup = round(warmup_epochs * steps_per_epoch) or (1 if warmup_epochs else 0)
        warmup = min(warmup, steps - 1)
        return lambda step: cosine_lr(step, steps, lr, warmup)
    if name in SCHEDULES:
        return timm_schedule(name.partition(":")[2], lr, epochs, steps_per_epoch, warmup_epochs)
    raise ScheduleError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")


def check_schedule(name: str) -> None:
    """Raise ``ScheduleError`` (one sentence) unless ``name`` is one of ``SCHEDULES``.

    Example::

        check_schedule("timm:cosine")   # fine
        check_schedule("timm:nope")     # ScheduleError listing the schedules
    """
    if name not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")


def timm_schedule(
    name: str, lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float
) -> Callable[[int], float]:
    """timm's scheduler ``name`` as the lr of each global step (0-based).

    Example::

        lr_at = timm_schedule("cosine", lr=1e-3, epochs=300, steps_per_epoch=1251,
                              warmup_epochs=5)
        lr_at(0)   # 1e-5: timm's warmup_lr

    timm schedules an optimizer's groups; this one schedules a throwaway optimizer's
    single group and reads its lr back, so the run's lr stays a pure function of the step.
    """
    from timm.scheduler import create_scheduler_v2

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler, _ = create_scheduler_v2(
        probe,
        sched=name,
        num_epochs=epochs,
        warmup_epochs=warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )

    def lr_at(step: int) -> float:
        scheduler.step_update(step)
        return probe.param_groups[0]["lr"]

    return lr_at
