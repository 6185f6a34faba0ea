"""MNIST and Fashion-MNIST (``mnist[:SIZE]``, ``fashion_mnist[:SIZE]``), held on the device.

Read from torchvision's folders (root/MNIST/raw, root/FashionMNIST/raw), or for
fashion_mnist from Debian's dataset-fashion-mnist package; ``:SIZE`` resizes once
at load.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from contsup.data.batches import DeviceBatches
from contsup.data.errors import DataError
from contsup.data.idx import IDX_IMAGES, IDX_LABELS, read_idx
from contsup.data.info import DatasetInfo
from contsup.data.registry import DEFAULT_DATA_DIR, LoadOptions, register_dataset

__all__ = ["MNIST_CLASSES", "SYSTEM_FASHION_MNIST"]

# Debian's dataset-fashion-mnist package installs the original IDX files here; used
# for fashion_mnist when the user gave no data dir of their own.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# The torchvision class of each MNIST-style dataset; it keeps its files in root/<class>/raw.
MNIST_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_INFO = {
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), 2, False),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), 2, True),
}


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


def _sized(name: str, argument: str) -> tuple[DatasetInfo, str]:
    """The info of ``mnist:SIZE`` or ``fashion_mnist:SIZE``: 1xSIZExSIZE images."""
    base = name.partition(":")[0]
    try:
        side = int(argument)
    except ValueError:
        side = 0
    if not 8 <= side <= 1024:
        raise DataError(f"{base} takes a size from 8 to 1024 like {base}:64, got {name!r}")
    info = MNIST_INFO[base]
    # Crops shift the image by as large a part of it as at 28x28.
    pad = max(1, round(info.pad * side / 28))
    return replace(info, name=f"{base}:{side}", image_size=(1, side, side), pad=pad), base


def _load(info: DatasetInfo, source: str, options: LoadOptions) -> DeviceBatches:
    device = torch.device(options.device)
    train_images, train_labels, test_images, test_labels = _mnist(
        source, options.root, options.download
    )
    size = info.image_size[1:]
    return DeviceBatches(
        info,
        options.batch_size,
        device,
        _resize(train_images, size, device),
        train_labels,
        _resize(test_images, size, device),
        test_labels,
    )


for _name, _info in MNIST_INFO.items():
    register_dataset(_name, _load, info=_info, variant=_sized, usage=f"{_name}:SIZE")
