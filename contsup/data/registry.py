"""Datasets by name: ``register_dataset`` adds one, ``parse_dataset`` and ``load_dataset``
find it.

A name is either bare (``cifar10``) or takes one argument after a colon
(``mnist:64``, ``synthetic:3x64x64``, ``imagefolder:PATH``); a dataset says
which it accepts when it registers. Each loader module registers its datasets
when ``contsup.data`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from contsup.data.batches import Batches
from contsup.data.errors import DataError, UnknownDatasetError
from contsup.data.info import DatasetInfo

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "LoadOptions",
    "dataset_names",
    "load_dataset",
    "missing",
    "parse_dataset",
    "register_dataset",
]

DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True)
class LoadOptions:
    """Where a loader puts its batches and finds its files."""

    batch_size: int
    device: str | torch.device
    root: Path
    download: bool
    workers: int


# load(info, source, options): source is the name without its argument, or the
# argument a variant's parser chose (imagefolder's path).
Loader = Callable[[DatasetInfo, str, LoadOptions], Batches]
# variant(name, argument) -> (info, source), for names like "mnist:64".
Variant = Callable[[str, str], tuple[DatasetInfo, str]]


@dataclass(frozen=True)
class _Entry:
    load: Loader
    info: DatasetInfo | None
    variant: Variant | None
    usage: str | None


_REGISTERED: dict[str, _Entry] = {}
# The bare names and their DatasetInfo, in registration order (public since 0.1).
DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    load: Loader,
    *,
    info: DatasetInfo | None = None,
    variant: Variant | None = None,
    usage: str | None = None,
) -> None:
    """Make dataset ``name`` available to ``load_dataset``, ``--dataset`` and recipes.

    Example::

        register_dataset("tiny", load_tiny, info=DatasetInfo("tiny", 10, (3, 8, 8), ...))
        load_dataset("tiny", batch_size=32)

    Args:
        load: builds the ``Batches`` from ``(info, source, LoadOptions)``.
        info: what the bare name loads; None when the name needs an argument.
        variant: parses ``name:ARGUMENT`` into ``(info, source)``; None when it takes none.
        usage: how the argument form is written in error messages, e.g. ``mnist:SIZE``.
    """
    if info is None and variant is None:
        raise ValueError(f"dataset {name!r} needs an info, a variant or both")
    _REGISTERED[name] = _Entry(load, info, variant, usage)
    if info is not None:
        DATASETS[name] = info


def dataset_names() -> list[str]:
    """The names ``--dataset`` takes: bare names, then argument forms like ``mnist:SIZE``.

    Example::

        >>> dataset_names()[:3]
        ['cifar10', 'cifar100', 'svhn']
    """
    forms = [e.usage for e in _REGISTERED.values() if e.variant is not None and e.usage]
    return [*DATASETS, *forms]


def parse_dataset(name: str) -> tuple[DatasetInfo, str]:
    """Dataset name -> (info, source); ``imagefolder:PATH`` and ``synthetic:CxHxW`` take one.

    Example::

        >>> parse_dataset("synthetic:3x64x64")[0].image_size
        (3, 64, 64)
        >>> parse_dataset("fashion_mnist:64")[0].image_size
        (1, 64, 64)
    """
    base, colon, argument = name.partition(":")
    entry = _REGISTERED.get(base)
    if entry is None or (entry.variant if colon else entry.info) is None:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}"
        )
    if colon:
        return entry.variant(name, argument)
    return entry.info, base


def load_dataset(
    name: str,
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    data_dir: str | Path = DEFAULT_DATA_DIR,
    download: bool = False,
    workers: int = 4,
) -> Batches:
    """Load a dataset by name into device-side or streamed batches.

    Example::

        data = load_dataset("cifar10", batch_size=1024, device="cuda", download=True)
        data.info.num_classes, data.train_size

    Names: cifar10, cifar100, svhn, stl10, digits (scikit-learn's handwritten
    digits upsampled to 3x32x32, the offline default), mnist[:SIZE] and
    fashion_mnist[:SIZE] (1x28x28, or resized once to 1xSIZExSIZE), synthetic[:CxHxW],
    and imagefolder:PATH (PATH/train and PATH/test class folders). fashion_mnist
    also reads Debian's dataset-fashion-mnist package when ``data_dir`` is the default.
    """
    info, source = parse_dataset(name)
    options = LoadOptions(batch_size, device, Path(data_dir).expanduser(), download, workers)
    return _REGISTERED[name.partition(":")[0]].load(info, source, options)


def missing(name: str, root: Path) -> DataError:
    """The error for a torchvision dataset that is not under ``root``."""
    return DataError(
        f"{name} is not under {root}; pass --download to fetch it there, or --data-dir "
        "to point at an existing copy"
    )
