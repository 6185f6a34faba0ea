"""A run's numbers, typed: per-unit training totals, and the record of one epoch.

``UnitTotals`` sums each unit's loss and correct count over an epoch's batches
(one collective reduces them across ranks); ``EpochRecord`` is one line of
``metrics.jsonl`` and one row of ``metrics.csv``. Keys follow one scheme,
``[head_|segment_]<split>_<quantity>``: ``test_accuracy`` is the model's,
``head_test_accuracies`` each local head's, ``segment_train_losses`` every
segment's (the last: the model's). Files of contsup 0.2 and 0.3 named two of them
otherwise (``segment_losses``, ``head_accuracies``); ``read_metrics`` and
``EpochRecord.from_dict`` read them under the new names.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from contsup.atomic import write_text_atomic
from contsup.errors import ContsupError

if TYPE_CHECKING:
    from contsup.distributed import Pipeline, StageStep

__all__ = [
    "EpochRecord",
    "MetricsError",
    "Evaluation",
    "UnitMeans",
    "UnitTotals",
    "read_metrics",
    "write_metrics",
]

# Keys of contsup 0.2 and 0.3 records, and the names they have now.
OLD_KEYS = {"segment_losses": "segment_train_losses", "head_accuracies": "head_test_accuracies"}


class MetricsError(ContsupError):
    """A run directory without readable metrics."""


@dataclass
class UnitMeans:
    """Each unit's mean training loss and accuracy over an epoch; the last unit is the model.

    ``accuracies`` of units with contrastive heads are 0: they classify nothing.
    """

    losses: list[float]
    accuracies: list[float]


@dataclass
class UnitTotals:
    """Sums over an epoch's training batches: each unit's loss times its batch size, and
    how many images its head (the last unit: the classifier) got right.

    Example::

        totals = UnitTotals.zeros(learner.k)
        totals.add(pipe.local_backward(x, y), len(y))   # after every step
        means = totals.means(pipe)                       # the same on every rank
    """

    losses: torch.Tensor
    correct: torch.Tensor
    images: int = 0

    @classmethod
    def zeros(cls, k: int, device: torch.device | str | None = None) -> UnitTotals:
        """Sums of ``k`` units at zero, on ``device`` (default: the CPU).

        Example::

            totals = UnitTotals.zeros(learner.k, "cuda")   # test batches add without a sync
        """
        return cls(*(torch.zeros(k, dtype=torch.float64, device=device) for _ in range(2)))

    def add(self, step: StageStep, images: int) -> None:
        """Add one step of this rank's units; ``images``: the whole batch, all replicas'."""
        units = step.units
        losses = torch.tensor(step.losses, dtype=torch.float64)
        self.losses[units.start : units.stop] += losses * step.size
        self.correct[units.start : units.stop] += torch.tensor(step.correct)
        self.images += images

    def only(self, units: range) -> UnitTotals:
        """A copy with the sums of units outside ``units`` zeroed (``images`` kept).

        Example::

            share = summed.only(pipe.units)   # a rank's part: the sum over ranks is ``summed``
        """
        kept = UnitTotals.zeros(len(self.losses))
        kept.losses[units.start : units.stop] = self.losses[units.start : units.stop]
        kept.correct[units.start : units.stop] = self.correct[units.start : units.stop]
        kept.images = self.images
        return kept

    def score(self, unit: int, scores: torch.Tensor, y: torch.Tensor) -> None:
        """Add a test batch of unit ``unit``: its summed cross-entropy and correct answers
        (count the batch's images with ``images``). Sums on the scores' device stay
        there: no host sync per unit and batch, only in ``means``."""
        loss = torch.nn.functional.cross_entropy(scores.float(), y, reduction="sum")
        # In float64, as the host's float sum was: the same sums, bit for bit.
        self.losses[unit] += loss.to(self.losses.device)
        self.correct[unit] += (scores.argmax(1) == y).sum().to(self.correct.device)

    def means(self, pipe: Pipeline) -> UnitMeans:
        """Every unit's means over all ranks' images (each rank sums its own units)."""
        k = len(self.losses)
        summed = pipe.all_reduce(torch.cat([self.losses, self.correct]))  # one collective
        means = (summed / self.images).tolist()
        return UnitMeans(means[:k], means[k:])


@dataclass
class Evaluation:
    """Test results, the same on every rank. Head lists are empty for contrastive heads.

    ``accuracy`` and ``loss``: the inference model's top-1 accuracy and mean
    cross-entropy; ``head_accuracies`` and ``head_losses``: each local head's, on
    its own boundary (how linearly separable each depth is).
    """

    accuracy: float
    loss: float
    head_accuracies: list[float]
    head_losses: list[float]

    @classmethod
    def of(cls, means: UnitMeans, heads: int) -> Evaluation:
        """The model's (last unit's) and the first ``heads`` heads' means."""
        return cls(means.accuracies[-1], means.losses[-1], means.accuracies[:heads],
                   means.losses[:heads])  # fmt: skip


@dataclass(kw_only=True)
class EpochRecord:
    """One epoch of a run, as ``metrics.jsonl`` holds it.

    Example::

        record = read_metrics("runs/x")[-1]
        record.test_accuracy, record.head_test_accuracies, record.test_accuracies()

    Fields that None may hold were not recorded by contsup 0.1; they are left out
    of the file when None.
    """

    epoch: int
    train_loss: float
    segment_train_losses: list[float]
    train_accuracy: float | None = None
    head_train_accuracies: list[float] | None = None
    test_accuracy: float
    test_loss: float | None = None
    head_test_accuracies: list[float]
    head_test_losses: list[float] | None = None
    lr: float
    seconds: float
    images_per_s: float
    peak_memory_bytes: int | None = None

    @classmethod
    def of(cls, epoch: int, train: UnitMeans, test: Evaluation, **timing: float) -> EpochRecord:
        """The record of an epoch's training means and test scores, plus ``lr``,
        ``seconds``, ``images_per_s`` and ``peak_memory_bytes``."""
        heads = len(test.head_accuracies)
        return cls(
            epoch=epoch,
            train_loss=train.losses[-1],
            segment_train_losses=train.losses,
            train_accuracy=train.accuracies[-1],
            head_train_accuracies=train.accuracies[:heads],
            test_accuracy=test.accuracy,
            test_loss=test.loss,
            head_test_accuracies=test.head_accuracies,
            head_test_losses=test.head_losses,
            **timing,
        )

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EpochRecord:
        """A record as a file or checkpoint of any contsup version holds it.

        Example::

            EpochRecord.from_dict(json.loads(line)).head_test_accuracies
        """
        known = {f.name for f in fields(cls)}
        renamed = {OLD_KEYS.get(key, key): value for key, value in record.items()}
        return cls(**{key: value for key, value in renamed.items() if key in known})

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def train_accuracies(self) -> list[float]:
        """Train accuracy by segment: each local head's, then the model's."""
        return [*(self.head_train_accuracies or []), self.train_accuracy]

    def test_accuracies(self) -> list[float]:
        """Test accuracy by segment: each local head's, then the model's."""
        return [*self.head_test_accuracies, self.test_accuracy]

    def test_losses(self) -> list[float]:
        """Test cross-entropy by segment: each local head's, then the model's."""
        return [*(self.head_test_losses or []), self.test_loss]


def write_metrics(out: Path, records: list[EpochRecord]) -> None:
    """Rewrite ``out/metrics.jsonl`` and ``out/metrics.csv`` from ``records``, atomically.

    Example::

        write_metrics(Path("runs/x"), records)

    The CSV spreads each list into one column per segment (``head_test_accuracy_0``...)
    and has the first record's columns: a run resumed from contsup 0.1 keeps 0.1's.
    """
    rows = [record.as_dict() for record in records]
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    lists = _LIST_COLUMNS
    first = rows[0] if rows else {}
    columns = [key for key in first if key not in lists]
    expanded = [(key, len(first[key])) for key in lists if key in first]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = [f"{lists[key]}_{i}" for key, n in expanded for i in range(n)]
    writer.writerow(columns + header)
    for row in rows:
        writer.writerow([row[c] for c in columns] + [v for key, _ in expanded for v in row[key]])
    write_text_atomic(out / "metrics.csv", buffer.getvalue())


# Each list's CSV columns: one per segment, ``<name>_<segment>``.
_LIST_COLUMNS = {
    "segment_train_losses": "segment_train_loss",
    "head_train_accuracies": "head_train_accuracy",
    "head_test_accuracies": "head_test_accuracy",
    "head_test_losses": "head_test_loss",
}


def read_metrics(run_dir: str | Path) -> list[EpochRecord]:
    """The records of ``run_dir/metrics.jsonl``, one per epoch, from any contsup version.

    Example::

        [r.test_accuracy for r in read_metrics("runs/resnet20-k4-E-digits")]
    """
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise MetricsError(f"cannot read {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path} is not a metrics file of `contsup train`") from error
    if not lines or not all(isinstance(r, dict) and "test_accuracy" in r for r in lines):
        raise MetricsError(f"{path} has no epochs of `contsup train`")
    try:
        return [EpochRecord.from_dict(line) for line in lines]
    except TypeError as error:
        raise MetricsError(f"{path} has an epoch this contsup cannot read: {error}") from error
