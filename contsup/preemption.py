"""Stopping a run early and cleanly: step checkpoints, and SIGTERM or SIGUSR1 as "stop".

A cluster that is about to end a job sends a signal first (SLURM: ``--signal``,
torchrun forwards SIGTERM). While ``train`` runs, ``StopSignals`` turns SIGTERM
and SIGUSR1 into a request: the trainer finishes its step, writes a checkpoint
and raises ``Preempted``, which ``contsup train`` turns into exit code
``PREEMPTED_EXIT_CODE`` (75, ``EX_TEMPFAIL``: try again). ``PartialEpoch`` is
what a checkpoint written mid-epoch records so that ``--resume`` replays the
epoch's data up to that step and goes on as if never stopped.
"""

from __future__ import annotations

import base64
import signal
import threading
from dataclasses import dataclass
from typing import Any

import torch

from contsup.errors import ConfigError
from contsup.metrics import UnitTotals

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "PartialEpoch",
    "Preempted",
    "StopSignals",
    "check_checkpoint_every",
]

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: stopped on request, resume to go on
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Preempted(Exception):
    """``train`` stopped at SIGTERM or SIGUSR1 after writing a checkpoint; resume it.

    Example::

        try:
            train(config)
        except Preempted as stop:
            train(config, resume=True)   # later: goes on after stop.epoch, stop.step
    """

    def __init__(self, signal_name: str, epoch: int, step: int, out_dir: str):
        super().__init__(
            f"stopped by {signal_name} after epoch {epoch}, step {step}, with a checkpoint in "
            f"{out_dir}; continue with --resume"
        )
        self.signal_name, self.epoch, self.step, self.out_dir = signal_name, epoch, step, out_dir


def check_checkpoint_every(steps: int | None) -> None:
    """Raise ``ConfigError`` unless ``steps`` is None (off) or at least 1.

    Example::

        >>> check_checkpoint_every(500)
        >>> check_checkpoint_every(0)
        Traceback (most recent call last):
        ...
        contsup.errors.ConfigError: --checkpoint-every takes a number of steps >= 1, got 0
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"--checkpoint-every takes a number of steps >= 1, got {steps!r}")


class StopSignals:
    """SIGTERM and SIGUSR1, while the block runs, only ask to stop: ``received`` names the
    first one (None: none came). The previous handlers are back after the block.

    Example::

        with StopSignals() as signals:
            while not signals.received:
                work()

    Python delivers signals to the main thread only: elsewhere nothing is installed.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            # None: a handler not set from Python; the default is the closest thing.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, number: int, frame: object) -> None:
        self.received = self.received or signal.Signals(number).name


@dataclass
class PartialEpoch:
    """Where a checkpoint written mid-epoch stopped: ``step`` steps of ``epoch`` done.

    ``data_rng`` is the data generator's state when the epoch began (its shuffle and
    augmentation replay from it), ``totals`` the epoch's training sums so far, and
    ``peak_memory_bytes`` its peak so far.

    Example::

        partial = PartialEpoch.from_dict(state["partial_epoch"])
        partial.epoch, partial.step
    """

    epoch: int
    step: int
    data_rng: torch.Tensor
    totals: UnitTotals
    peak_memory_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; floats keep every bit (``json`` writes the shortest exact repr)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "data_rng": base64.b64encode(self.data_rng.numpy().tobytes()).decode(),
            "losses": self.totals.losses.tolist(),
            "correct": self.totals.correct.tolist(),
            "images": self.totals.images,
            "peak_memory_bytes": self.peak_memory_bytes,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PartialEpoch:
        """The record ``as_dict`` wrote; ``ValueError`` (or ``KeyError``, ``TypeError``)
        if it is malformed."""
        data = bytearray(base64.b64decode(record["data_rng"], validate=True))
        totals = UnitTotals(
            torch.tensor(record["losses"], dtype=torch.float64),
            torch.tensor(record["correct"], dtype=torch.float64),
            int(record["images"]),
        )
        epoch, step = int(record["epoch"]), int(record["step"])
        if epoch < 1 or step < 0 or len(totals.losses) != len(totals.correct):
            raise ValueError(f"epoch {epoch}, step {step}")
        return cls(epoch, step, torch.frombuffer(data, dtype=torch.uint8), totals,
                   int(record["peak_memory_bytes"]))  # fmt: skip
