"""Datasets, as batches of (normalised input, label, raw image in [0, 1]) on the device.

CIFAR-sized datasets (cifar10, cifar100, svhn, digits, synthetic, mnist,
fashion_mnist) live on the device as uint8 tensors and are augmented there
(reflect-pad random crop, flip, normalise), so no loader can starve the GPU.
Larger ones (stl10, ``imagefolder:PATH``) stream through a DataLoader with
workers and pinned memory. Nothing is downloaded without ``download=True``.
Under ``torch.distributed`` each rank decodes only its ``Part`` of every batch
(``Batches.train_parts``), so each image is decoded once across the world.

Each dataset is a name in a registry (``registry.py``), loaded by its own module;
``register_dataset`` adds one::

    register_dataset("tiny", load_tiny, info=DatasetInfo("tiny", 10, (3, 8, 8), ...))
    data = load_dataset("tiny", batch_size=32)
"""

# The loader modules register their datasets on import, in the order the names are listed.
from contsup.data import cifar, svhn, stl10, digits, synthetic, mnist, imagefolder  # noqa: F401, I001
from contsup.data.batches import Batches, DeviceBatches, LoaderBatches, steps_per_epoch
from contsup.data.errors import DataError, UnknownDatasetError
from contsup.data.idx import IDX_IMAGES, IDX_LABELS, read_idx
from contsup.data.info import DatasetInfo, info_from_record, info_record
from contsup.data.mnist import SYSTEM_FASHION_MNIST
from contsup.data.parts import BatchPart, Part
from contsup.data.registry import (
    DATASETS,
    DEFAULT_DATA_DIR,
    LoadOptions,
    dataset_names,
    load_dataset,
    parse_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "IDX_IMAGES",
    "IDX_LABELS",
    "SYSTEM_FASHION_MNIST",
    "BatchPart",
    "Batches",
    "DataError",
    "DatasetInfo",
    "DeviceBatches",
    "LoadOptions",
    "LoaderBatches",
    "Part",
    "UnknownDatasetError",
    "dataset_names",
    "info_from_record",
    "info_record",
    "load_dataset",
    "parse_dataset",
    "read_idx",
    "register_dataset",
    "steps_per_epoch",
]
