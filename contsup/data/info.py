"""What a dataset is, without its images: shape, classes, normalisation, augmentation."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HALF", "DatasetInfo", "info_from_record", "info_record"]

HALF = (0.5, 0.5, 0.5)  # mean and std that map [0, 1] to [-1, 1]


@dataclass(frozen=True)
class DatasetInfo:
    """Shape, classes, normalisation and training augmentation of a dataset."""

    name: str
    num_classes: int
    image_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool


def info_record(info: DatasetInfo) -> dict:
    """What a checkpoint or an exported model keeps of its data, as JSON: enough to
    rebuild the model (shape, classes, normalisation) without the data.

    Example::

        >>> from contsup.data import DATASETS
        >>> info_record(DATASETS["digits"])["image_size"]
        [3, 32, 32]
    """
    return {
        "name": info.name,
        "num_classes": info.num_classes,
        "image_size": list(info.image_size),
        "mean": list(info.mean),
        "std": list(info.std),
    }


def info_from_record(record: dict) -> DatasetInfo:
    """The ``DatasetInfo`` an ``info_record`` describes (no training augmentation).

    Example::

        >>> from contsup.data import DATASETS
        >>> info_from_record(info_record(DATASETS["digits"])).image_size
        (3, 32, 32)
    """
    return DatasetInfo(
        str(record["name"]),
        int(record["num_classes"]),
        tuple(int(v) for v in record["image_size"]),
        tuple(float(v) for v in record["mean"]),
        tuple(float(v) for v in record["std"]),
        0,
        False,
    )
