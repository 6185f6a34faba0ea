"""TensorBoard event files for a run: per-segment loss and accuracy, lr, speed, memory.

Written to the run directory by global rank 0, one point per epoch, so
``tensorboard --logdir runs`` shows every run. Needs the ``tensorboard``
package (``pip install 'contsup[tb]'``); without it, runs log to
metrics.jsonl/csv only unless TensorBoard was asked for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from contsup.errors import ContsupError
from contsup.metrics import EpochRecord

__all__ = ["TensorBoardMissing", "available", "log_epoch", "open_writer"]


class TensorBoardMissing(ContsupError):
    """TensorBoard logging was asked for, but the package is not installed."""


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def open_writer(run_dir: str | Path, wanted: bool | None):
    """A ``SummaryWriter`` on ``run_dir``, or None: ``wanted`` None means "if installed".

    Example::

        writer = open_writer("runs/x", None)
    """
    if wanted is False or (wanted is None and not available()):
        return None
    if not available():
        raise TensorBoardMissing(
            "--tensorboard needs the tensorboard package: pip install 'contsup[tb]'"
        )
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir))


def log_epoch(writer, record: EpochRecord) -> None:
    """Write one epoch's record at step ``record.epoch``.

    Example::

        log_epoch(open_writer("runs/x", True), record)

    Per segment i: ``train/loss/segment_i``, ``train/accuracy/segment_i``,
    ``test/loss/segment_i`` and ``test/accuracy/segment_i``; the last segment's are
    the model's own (its classifier). Then ``lr``, ``images_per_s``,
    ``epoch_seconds`` and ``peak_memory_bytes``.
    """
    epoch = record.epoch
    segments = len(record.segment_train_losses)
    series = {
        "train/loss": record.segment_train_losses,
        "train/accuracy": record.train_accuracies(),
        "test/loss": record.test_losses(),
        "test/accuracy": record.test_accuracies(),
    }
    for name, values in series.items():
        # Contrastive heads give no accuracy: then only the model's value is there.
        for i, value in enumerate(values, start=segments - len(values)):
            writer.add_scalar(f"{name}/segment_{i}", value, epoch)
    for name in ("lr", "images_per_s", "peak_memory_bytes"):
        writer.add_scalar(name, getattr(record, name), epoch)
    writer.add_scalar("epoch_seconds", record.seconds, epoch)
    writer.flush()
