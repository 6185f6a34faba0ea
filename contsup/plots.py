"""``contsup plot``: a run's accuracy by segment and by epoch, for people without TensorBoard."""

from __future__ import annotations

from pathlib import Path

from contsup.metrics import MetricsError, read_metrics

__all__ = ["PlotError", "plot_run", "read_metrics"]

PlotError = MetricsError  # its old name: a run directory without readable metrics


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
    epochs = [r.epoch for r in records]
    last = records[-1]
    test = last.test_accuracies()
    segments = len(test)
    fig, (by_epoch, by_segment) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.get_cmap("viridis")
    for i in range(segments):
        series = [r.test_accuracies()[i] for r in records]
        label = "model" if i == segments - 1 else f"head {i}"
        by_epoch.plot(epochs, series, color=colors(i / max(segments - 1, 1)), label=label)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("test accuracy")
    by_epoch.legend(fontsize=7, ncol=2)
    positions = range(segments)
    if last.train_accuracy is not None:  # contsup 0.1 did not record it
        train = last.train_accuracies()
        if len(train) == segments:
            by_segment.plot(positions, train, marker="o", label="train")
    by_segment.plot(positions, test, marker="o", label="test")
    by_segment.set_xticks(list(positions))
    by_segment.set_xlabel("segment (the last: the model's classifier)")
    by_segment.set_ylabel(f"accuracy at epoch {last.epoch}")
    by_segment.legend()
    fig.suptitle(f"{Path(run_dir).name}: local heads and the model")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
