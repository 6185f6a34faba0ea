"""A tiny image folder for the tests of streamed datasets."""

from pathlib import Path


def image_folder(root: Path, *, images: int = 3, size=(40, 30), suffix: str = "png") -> Path:
    """``root``/{train,test}/{cat,dog}/ with ``images`` solid images each; returns ``root``.

    Example::

        data = load_dataset(f"imagefolder:{image_folder(tmp_path)}", batch_size=4, workers=0)
    """
    from PIL import Image

    for split in ("train", "test"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(images):
                Image.new("RGB", size, (i * 40, 10, 200)).save(folder / f"{i}.{suffix}")
    return root
