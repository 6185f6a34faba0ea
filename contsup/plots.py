"""``contsup plot``: a run's accuracy by segment and by epoch, for people without TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from contsup.errors import ContsupError

__all__ = ["PlotError", "plot_run", "read_metrics"]


class PlotError(ContsupError):
    """A run directory without readable metrics."""


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, one per epoch."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise PlotError(f"cannot read {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise PlotError(f"{path} is not a metrics file of `contsup train`") from error
    if not records or not all(isinstance(r, dict) and "test_accuracy" in r for r in records):
        raise PlotError(f"{path} has no epochs of `contsup train`")
    return records


def _by_segment(record: dict, heads: str, model: str) -> list[float]:
    """A record's per-head values then the model's: one per segment (heads may be absent)."""
    return [*record.get(heads, []), record[model]]


def plot_run(run_dir: str | Path, out: str | Path) -> Path:
    """Draw test accuracy by epoch for each segment, and train/test accuracy by segment
    at the last epoch, from ``run_dir/metrics.jsonl``; returns the image's path.

    Example::

        plot_run("runs/resnet20-k4-E-digits", "accuracy.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    epochs = [r["epoch"] for r in records]
    last = records[-1]
    test = _by_segment(last, "head_accuracies", "test_accuracy")
    segments = len(test)
    fig, (by_epoch, by_segment) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.get_cmap("viridis")
    for i in range(segments):
        series = [_by_segment(r, "head_accuracies", "test_accuracy")[i] for r in records]
        label = "model" if i == segments - 1 else f"head {i}"
        by_epoch.plot(epochs, series, color=colors(i / max(segments - 1, 1)), label=label)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("test accuracy")
    by_epoch.legend(fontsize=7, ncol=2)
    positions = range(segments)
    if "train_accuracy" in last:
        train = _by_segment(last, "head_train_accuracies", "train_accuracy")
        if len(train) == segments:
            by_segment.plot(positions, train, marker="o", label="train")
    by_segment.plot(positions, test, marker="o", label="test")
    by_segment.set_xticks(list(positions))
    by_segment.set_xlabel("segment (the last: the model's classifier)")
    by_segment.set_ylabel(f"accuracy at epoch {last['epoch']}")
    by_segment.legend()
    fig.suptitle(f"{Path(run_dir).name}: local heads and the model")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
