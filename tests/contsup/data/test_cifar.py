"""contsup.data.cifar: torchvision's CIFAR files, read offline; downloads only when asked."""

import pickle

import numpy as np
import pytest
import torch
import torchvision

from contsup.data import DataError, load_dataset


def write_fake_cifar(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 is not under .*; pass --download"):
        load_dataset("cifar10", batch_size=8, data_dir=tmp_path)


def test_cifar_from_torchvision_files(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)
    # Our fake files have no real checksums; everything else is torchvision's own code.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    data = load_dataset("cifar10", batch_size=32, data_dir=tmp_path)
    assert (data.train_size, data.test_size) == (100, 20)
    assert data.train_images.shape == (100, 3, 32, 32) and data.info.flip and data.info.pad == 4
    x, _, _ = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == (32, 3, 32, 32)


def test_download_happens_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):
        calls.append(self.root)
        if not (tmp_path / "cifar-10-batches-py").exists():
            write_fake_cifar(tmp_path)

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fake_download)
    monkeypatch.setattr(
        torchvision.datasets.cifar,
        "check_integrity",
        lambda path, md5=None: (tmp_path / "cifar-10-batches-py").exists(),
    )
    with pytest.raises(DataError):
        load_dataset("cifar10", batch_size=8, data_dir=tmp_path)
    assert calls == []
    data = load_dataset("cifar10", batch_size=8, data_dir=tmp_path, download=True)
    assert calls and data.train_size == 100
