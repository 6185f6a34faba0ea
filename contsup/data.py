"""Datasets, as batches of (normalised input, label, raw image in [0, 1]) on the device.

CIFAR-sized datasets (cifar10, cifar100, svhn, digits, synthetic) live on the
device as uint8 tensors and are augmented there (reflect-pad random crop, flip,
normalise), so no loader can starve the GPU. Larger ones (stl10,
``imagefolder:PATH``) stream through a DataLoader with workers and pinned memory.
Nothing is downloaded without ``download=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from contsup.errors import ContsupError

__all__ = ["DATASETS", "DataError", "DatasetInfo", "Batches", "load_dataset"]

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
HALF = (0.5, 0.5, 0.5)


class DataError(ContsupError):
    """A dataset that is missing, malformed or unknown; the message says how to fix it."""


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


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 4, True),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 4, True),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32), HALF, HALF, 2, False),
    "stl10": DatasetInfo("stl10", 10, (3, 96, 96), HALF, HALF, 4, True),
    "digits": DatasetInfo("digits", 10, (3, 32, 32), HALF, HALF, 2, False),
    "synthetic": DatasetInfo("synthetic", 10, (3, 32, 32), HALF, HALF, 4, True),
}
NAMES = (*DATASETS, "imagefolder:PATH", "synthetic:CxHxW")


class Batches:
    """Training and test batches of one dataset, already on ``device``.

    Example::

        data = load_dataset("digits", batch_size=64, device="cpu")
        for x, y, raw in data.train(generator): ...
    """

    def __init__(self, info: DatasetInfo, batch_size: int, device: torch.device):
        self.info, self.batch_size, self.device = info, batch_size, torch.device(device)
        self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)

    train_size: int
    test_size: int

    def train(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def test(self) -> Iterator[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std


class DeviceBatches(Batches):
    """A whole uint8 dataset on the device, shuffled and augmented there."""

    def __init__(
        self, info, batch_size, device, train_images, train_labels, test_images, test_labels
    ):
        super().__init__(info, batch_size, device)
        self.train_images = train_images.to(self.device)
        self.train_labels = train_labels.to(self.device)
        self.test_images = test_images.to(self.device)
        self.test_labels = test_labels.to(self.device)
        self.train_size, self.test_size = len(train_labels), len(test_labels)

    def train(self, generator: torch.Generator):
        order = torch.randperm(self.train_size, generator=generator)
        for start in range(0, self.train_size, self.batch_size):
            index = order[start : start + self.batch_size].to(self.device)
            raw = self.train_images[index].float().div_(255)
            raw = self.augment(raw, generator)
            yield self.normalise(raw), self.train_labels[index], raw

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Reflect-pad random crop and optional horizontal flip, per image, on the device."""
        n, _, h, w = images.shape
        pad = self.info.pad
        # Draw on the CPU generator, so runs and resumed runs see the same numbers.
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(self.device)
        flips = torch.rand(n, generator=generator).to(self.device) < 0.5
        if pad:
            padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
            rows = offsets[0][:, None] + torch.arange(h, device=self.device)
            cols = offsets[1][:, None] + torch.arange(w, device=self.device)
            batch = torch.arange(n, device=self.device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
            images = images.permute(0, 3, 1, 2)
        if self.info.flip:
            images = torch.where(flips[:, None, None, None], images.flip(3), images)
        return images.contiguous()

    def test(self):
        for start in range(0, self.test_size, self.batch_size):
            raw = self.test_images[start : start + self.batch_size].float().div_(255)
            yield self.normalise(raw), self.test_labels[start : start + self.batch_size], raw


class LoaderBatches(Batches):
    """A torchvision dataset streamed by a DataLoader (workers, pinned memory)."""

    def __init__(self, info, batch_size, device, train_set, test_set, workers: int):
        super().__init__(info, batch_size, device)
        self.train_set, self.test_set, self.workers = train_set, test_set, workers
        self.train_size, self.test_size = len(train_set), len(test_set)

    def _loader(self, dataset, generator=None):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _batches(self, loader):
        for raw, labels in loader:
            raw = raw.to(self.device, non_blocking=True)
            yield self.normalise(raw), labels.to(self.device, non_blocking=True), raw

    def train(self, generator):
        return self._batches(self._loader(self.train_set, generator))

    def test(self):
        return self._batches(self._loader(self.test_set))


def _digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return images[train].contiguous(), labels[train], images[test].contiguous(), labels[test]


def _synthetic(shape: tuple[int, int, int], classes: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    make = lambda n: torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)  # noqa: E731
    return (
        make(2048),
        torch.randint(0, classes, (2048,), generator=g),
        make(512),
        torch.randint(0, classes, (512,), generator=g),
    )


def _torchvision(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    try:
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            train, test = (cls(root, train=t, download=download) for t in (True, False))
            as_tensor = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
            return (
                as_tensor(train),
                torch.tensor(train.targets),
                as_tensor(test),
                torch.tensor(test.targets),
            )
        if name == "svhn":
            train, test = (tvd.SVHN(root, split=s, download=download) for s in ("train", "test"))
            return (
                torch.from_numpy(train.data),
                torch.from_numpy(train.labels).long(),
                torch.from_numpy(test.data),
                torch.from_numpy(test.labels).long(),
            )
    except RuntimeError as error:
        if "not found" not in str(error) and "corrupted" not in str(error):
            raise
        raise DataError(
            f"{name} is not under {root}; pass --download to fetch it there, or --data-dir "
            "to point at an existing copy"
        ) from error
    raise AssertionError(name)


def _loader_datasets(info: DatasetInfo, source: str, root: Path, download: bool):
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    c, h, w = info.image_size
    train_tf = T.Compose(
        [T.RandomCrop((h, w), padding=info.pad, padding_mode="reflect")]
        + ([T.RandomHorizontalFlip()] if info.flip else [])
        + [T.ToTensor()]
    )
    test_tf = T.Compose([T.Resize((h, w)), T.ToTensor()])
    if source == "stl10":
        try:
            return (
                tvd.STL10(root, split="train", transform=train_tf, download=download),
                tvd.STL10(root, split="test", transform=test_tf, download=download),
            )
        except RuntimeError as error:
            raise DataError(
                f"stl10 is not under {root}; pass --download to fetch it there, or --data-dir "
                "to point at an existing copy"
            ) from error
    folder = Path(source)
    test_dir = next((folder / d for d in ("test", "val") if (folder / d).is_dir()), None)
    if not (folder / "train").is_dir() or test_dir is None:
        raise DataError(f"imagefolder:{folder} needs train/ and test/ (or val/) class folders")
    train_tf = T.Compose(
        [T.RandomResizedCrop((h, w))]
        + ([T.RandomHorizontalFlip()] if info.flip else [])
        + [T.ToTensor()]
    )
    test_tf = T.Compose([T.Resize(round(h * 256 / 224)), T.CenterCrop((h, w)), T.ToTensor()])
    return tvd.ImageFolder(folder / "train", train_tf), tvd.ImageFolder(test_dir, test_tf)


def parse_dataset(name: str) -> tuple[DatasetInfo, str]:
    """Dataset name -> (info, source); ``imagefolder:PATH`` and ``synthetic:CxHxW`` take one.

    Example::

        >>> parse_dataset("synthetic:3x64x64")[0].image_size
        (3, 64, 64)
    """
    if name.startswith("imagefolder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        if not path.is_dir():
            raise DataError(f"imagefolder: {path} is not a directory")
        train = path / "train"
        classes = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        info = DatasetInfo(
            name, len(classes), (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True
        )
        return info, str(path)
    if name.startswith("synthetic:"):
        try:
            shape = tuple(int(v) for v in name.split(":", 1)[1].lower().split("x"))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            raise DataError(
                f"synthetic takes a shape like synthetic:3x224x224, got {name!r}"
            ) from None
        info = replace(
            DATASETS["synthetic"],
            name=name,
            image_size=shape,
            mean=(0.5,) * shape[0],
            std=(0.5,) * shape[0],
            pad=max(1, shape[1] // 8),
        )
        return info, "synthetic"
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    return DATASETS[name], name


def load_dataset(
    name: str,
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    data_dir: str | Path = "data",
    download: bool = False,
    workers: int = 4,
) -> Batches:
    """Load a dataset by name into device-side or streamed batches.

    Example::

        data = load_dataset("cifar10", batch_size=1024, device="cuda", download=True)
        data.info.num_classes, data.train_size

    Names: cifar10, cifar100, svhn, stl10, digits (scikit-learn's handwritten
    digits upsampled to 3x32x32, the offline default), synthetic[:CxHxW], and
    imagefolder:PATH (PATH/train and PATH/test class folders).
    """
    info, source = parse_dataset(name)
    root = Path(data_dir).expanduser()
    if source == "digits":
        return DeviceBatches(info, batch_size, device, *_digits())
    if source == "synthetic":
        return DeviceBatches(
            info, batch_size, device, *_synthetic(info.image_size, info.num_classes)
        )
    if source in ("cifar10", "cifar100", "svhn"):
        return DeviceBatches(info, batch_size, device, *_torchvision(source, root, download))
    train, test = _loader_datasets(info, source, root, download)
    if source != "stl10":
        info = replace(info, num_classes=len(train.classes))
    return LoaderBatches(info, batch_size, device, train, test, workers)


def steps_per_epoch(data: Batches) -> int:
    return math.ceil(data.train_size / data.batch_size)
