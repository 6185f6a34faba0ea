"""STL-10 (torchvision's files, 96x96), streamed through a DataLoader."""

from __future__ import annotations

from contsup.data.batches import LoaderBatches
from contsup.data.info import HALF, DatasetInfo
from contsup.data.registry import LoadOptions, missing, register_dataset

__all__: list[str] = []


def _load(info: DatasetInfo, source: str, options: LoadOptions) -> LoaderBatches:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    _, h, w = info.image_size
    train_tf = T.Compose(
        [T.RandomCrop((h, w), padding=info.pad, padding_mode="reflect")]
        + ([T.RandomHorizontalFlip()] if info.flip else [])
        + [T.ToTensor()]
    )
    test_tf = T.Compose([T.Resize((h, w)), T.ToTensor()])
    root, download = options.root, options.download
    try:
        train = tvd.STL10(root, split="train", transform=train_tf, download=download)
        test = tvd.STL10(root, split="test", transform=test_tf, download=download)
    except RuntimeError as error:
        raise missing("stl10", root) from error
    return LoaderBatches(info, options.batch_size, options.device, train, test, options.workers)


register_dataset("stl10", _load, info=DatasetInfo("stl10", 10, (3, 96, 96), HALF, HALF, 4, True))
