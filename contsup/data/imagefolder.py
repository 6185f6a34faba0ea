"""``imagefolder:PATH``: PATH/train and PATH/test (or val) class folders at 224 px, streamed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from contsup.data.batches import LoaderBatches
from contsup.data.errors import DataError
from contsup.data.info import DatasetInfo
from contsup.data.registry import LoadOptions, register_dataset

__all__: list[str] = []

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _folder(name: str, argument: str) -> tuple[DatasetInfo, str]:
    """The info of ``imagefolder:PATH``: as many classes as PATH/train has folders."""
    path = Path(argument).expanduser()
    if not path.is_dir():
        raise DataError(f"imagefolder: {path} is not a directory")
    train = path / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    info = DatasetInfo(name, len(classes), (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 0, True)
    return info, str(path)


def _load(info: DatasetInfo, source: str, options: LoadOptions) -> LoaderBatches:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    _, h, w = info.image_size
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
    train, test = tvd.ImageFolder(folder / "train", train_tf), tvd.ImageFolder(test_dir, test_tf)
    info = replace(info, num_classes=len(train.classes))
    return LoaderBatches(info, options.batch_size, options.device, train, test, options.workers)


register_dataset("imagefolder", _load, variant=_folder, usage="imagefolder:PATH")
