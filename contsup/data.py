"""Datasets, as batches of (normalised input, label, raw image in [0, 1]) on the device.

CIFAR-sized datasets (cifar10, cifar100, svhn, digits, synthetic, mnist,
fashion_mnist) live on the device as uint8 tensors and are augmented there
(reflect-pad random crop, flip, normalise), so no loader can starve the GPU.
Larger ones (stl10, ``imagefolder:PATH``) stream through a DataLoader with
workers and pinned memory. Nothing is downloaded without ``download=True``.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from contsup.errors import ContsupError

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DataError",
    "DatasetInfo",
    "Batches",
    "load_dataset",
    "read_idx",
]

DEFAULT_DATA_DIR = "data"
# Debian's dataset-fashion-mnist package installs the original IDX files here; used
# for fashion_mnist when the user gave no data dir of their own.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
HALF = (0.5, 0.5, 0.5)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

# The torchvision class of each MNIST-style dataset; it keeps its files in root/<class>/raw.
MNIST_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: unsigned bytes, 3 and 1 dimensions


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


def info_record(info: DatasetInfo) -> dict:
    """What a checkpoint or an exported model keeps of its data, as JSON: enough to
    rebuild the model (shape, classes, normalisation) without the data.

    Example::

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


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 4, True),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, 4, True),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32), HALF, HALF, 2, False),
    "stl10": DatasetInfo("stl10", 10, (3, 96, 96), HALF, HALF, 4, True),
    "digits": DatasetInfo("digits", 10, (3, 32, 32), HALF, HALF, 2, False),
    "synthetic": DatasetInfo("synthetic", 10, (3, 32, 32), HALF, HALF, 4, True),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), MNIST_MEAN, MNIST_STD, 2, False),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, (1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD, 2, True
    ),
}
NAMES = (*DATASETS, "mnist:SIZE", "fashion_mnist:SIZE", "imagefolder:PATH", "synthetic:CxHxW")


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

    def take(self, train: int | None, test: int | None) -> None:
        """Keep only the first ``train`` training and ``test`` test images (None: all)."""
        if train is not None or test is not None:
            raise DataError(
                f"{self.info.name} streams from disk; train_images and test_images work with "
                "the datasets held on the device (cifar*, svhn, digits, mnist, fashion_mnist)"
            )

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

    def take(self, train: int | None, test: int | None) -> None:
        for name, count in (("train_images", train), ("test_images", test)):
            if count is not None and count < 1:
                raise DataError(f"{name} must be at least 1, got {count}")
        self.train_images, self.train_labels = self.train_images[:train], self.train_labels[:train]
        self.test_images, self.test_labels = self.test_images[:test], self.test_labels[:test]
        self.train_size, self.test_size = len(self.train_labels), len(self.test_labels)

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


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """One IDX file (gzip-compressed if it ends in .gz) as a uint8 tensor of its shape.

    Example::

        labels = read_idx(Path("t10k-labels-idx1-ubyte.gz"), IDX_LABELS)  # shape (10000,)

    ``magic`` is the number the file must start with: ``IDX_IMAGES`` or ``IDX_LABELS``.
    """
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {error}") from error
    # The low byte of the magic number is the number of dimensions, one int32 each.
    header = 4 * (1 + (magic & 0xFF))
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file: it does not start with magic number {magic}")
    shape = [int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4)]
    size = math.prod(shape)
    if not size or len(data) != header + size:
        raise DataError(
            f"{path} is malformed: its header promises {size} bytes of data, it holds "
            f"{len(data) - header}"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(shape)


def _idx_files(folder: Path) -> list[Path] | None:
    """The four IDX files of an MNIST-style dataset in ``folder`` (plain or .gz), or None."""
    found = []
    for stem in IDX_FILES:
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _idx_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) uint8 images and (N,) int64 labels from an images and a labels file."""
    images, labels = read_idx(images_path, IDX_IMAGES), read_idx(labels_path, IDX_LABELS)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds {tuple(images.shape[1:])} images, not 28x28")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path} has {len(labels)} labels for the {len(images)} images of {images_path}"
        )
    if labels.max() > 9:
        raise DataError(f"{labels_path} has labels outside 0..9")
    return images[:, None].contiguous(), labels.long()


def _mnist(name: str, root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    """mnist or fashion_mnist as uint8 tensors, from root/<torchvision class>/raw.

    Falls back to ``SYSTEM_FASHION_MNIST`` for fashion_mnist when ``root`` is the
    default; downloads (through torchvision) only when asked and nothing was found.
    """
    import torchvision.datasets as tvd

    cls = getattr(tvd, MNIST_CLASSES[name])
    raw = root / cls.__name__ / "raw"
    folders = [raw]
    if name == "fashion_mnist" and root == Path(DEFAULT_DATA_DIR):
        folders.append(SYSTEM_FASHION_MNIST)
    files = next((f for f in map(_idx_files, folders) if f is not None), None)
    if files is None and download:
        try:
            # torchvision fetches all four files (checking their md5) whichever split we ask for.
            cls(root, train=False, download=True)
        except RuntimeError as error:
            raise DataError(
                f"could not download {name} into {raw}; check the network, or pass --data-dir "
                "to point at an existing copy"
            ) from error
        files = _idx_files(raw)
    if files is None:
        how = (
            "run `apt-get install dataset-fashion-mnist`"
            if len(folders) > 1
            else "pass --data-dir to point at an existing copy"
        )
        where = " or ".join(str(f) for f in folders)
        raise DataError(f"{name} is not under {where}; pass --download to fetch it there, or {how}")
    return (*_idx_split(*files[:2]), *_idx_split(*files[2:]))


def _resize(images: torch.Tensor, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """uint8 images resized once on ``device`` (bilinear, antialiased when shrinking)."""
    images = images.to(device)
    if tuple(images.shape[-2:]) == size:
        return images
    out = torch.empty((*images.shape[:2], *size), dtype=torch.uint8, device=device)
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    # Chunks of about 2**26 pixels, so the float copies stay small at any size.
    chunk = max(1, 2**26 // (images.shape[1] * size[0] * size[1]))
    for start in range(0, len(images), chunk):
        part = F.interpolate(
            images[start : start + chunk].float(),
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=shrink,
        )
        out[start : start + chunk] = part.clamp_(0, 255).round_().to(torch.uint8)
    return out


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
        >>> parse_dataset("fashion_mnist:64")[0].image_size
        (1, 64, 64)
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
    base, colon, size = name.partition(":")
    if base in MNIST_CLASSES and colon:
        try:
            side = int(size)
        except ValueError:
            side = 0
        if not 8 <= side <= 1024:
            raise DataError(f"{base} takes a size from 8 to 1024 like {base}:64, got {name!r}")
        info = DATASETS[base]
        # Crops shift the image by as large a part of it as at 28x28.
        pad = max(1, round(info.pad * side / 28))
        return replace(info, name=f"{base}:{side}", image_size=(1, side, side), pad=pad), base
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    return DATASETS[name], name


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
    root = Path(data_dir).expanduser()
    if source == "digits":
        return DeviceBatches(info, batch_size, device, *_digits())
    if source == "synthetic":
        return DeviceBatches(
            info, batch_size, device, *_synthetic(info.image_size, info.num_classes)
        )
    if source in ("cifar10", "cifar100", "svhn"):
        return DeviceBatches(info, batch_size, device, *_torchvision(source, root, download))
    if source in MNIST_CLASSES:
        device = torch.device(device)
        train_images, train_labels, test_images, test_labels = _mnist(source, root, download)
        size = info.image_size[1:]
        return DeviceBatches(
            info,
            batch_size,
            device,
            _resize(train_images, size, device),
            train_labels,
            _resize(test_images, size, device),
            test_labels,
        )
    train, test = _loader_datasets(info, source, root, download)
    if source != "stl10":
        info = replace(info, num_classes=len(train.classes))
    return LoaderBatches(info, batch_size, device, train, test, workers)


def steps_per_epoch(data: Batches) -> int:
    return math.ceil(data.train_size / data.batch_size)
