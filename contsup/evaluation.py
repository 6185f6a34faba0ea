"""Test accuracy of a saved run, and of each local head: the library behind ``contsup eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contsup.errors import ContsupError

__all__ = ["DatasetMismatchError", "evaluate_run"]


class DatasetMismatchError(ContsupError):
    """A dataset whose images or classes differ from those the run was trained on."""


def evaluate_run(
    run_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    best: bool = False,
) -> dict[str, Any]:
    """Score a run's model and heads on its test split, from its last (or best) checkpoint.

    Example::

        result = evaluate_run("runs/digits", best=True)
        result["test_accuracy"], result["head_accuracies"]

    ``dataset`` scores on another dataset of the same image shape and classes (its
    whole test split); without it, the run's own dataset and test images. Returns
    the ``contsup eval --json`` object.
    """
    from contsup.building import resolve_device
    from contsup.data import load_dataset
    from contsup.devices import check_device
    from contsup.distributed import pipeline
    from contsup.runs import open_run

    check_device(device)
    run = open_run(run_dir, best=best)
    config = run.config
    name = dataset or config.dataset
    target = resolve_device(device)
    data = load_dataset(
        name,
        batch_size=batch_size or config.batch_size,
        device=target,
        data_dir=data_dir or config.data_dir,
        workers=config.workers,
    )
    if (tuple(data.info.image_size), data.info.num_classes) != (
        tuple(run.info.image_size),
        run.info.num_classes,
    ):
        raise DatasetMismatchError(
            f"{name} has {data.info.num_classes} classes of {tuple(data.info.image_size)} "
            f"images; the run was trained on {run.info.num_classes} of "
            f"{tuple(run.info.image_size)}"
        )
    if dataset is None:
        data.take(None, config.test_images)  # the run's own test split
    scores = pipeline(run.learner, None, target).evaluate(data.test())
    return {
        "run": str(run_dir),
        "epoch": run.state["epoch"],
        "dataset": name,
        "test_images": data.test_size,
        "test_accuracy": scores.accuracy,
        "test_loss": scores.loss,
        "head_accuracies": scores.head_accuracies,
        "head_test_losses": scores.head_losses,
    }
