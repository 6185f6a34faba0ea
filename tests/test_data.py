import pickle

import numpy as np
import pytest
import torch
import torchvision

from contsup.data import DataError, DeviceBatches, load_dataset, parse_dataset


def test_digits_is_offline_fixed_and_cifar_shaped():
    data = load_dataset("digits", batch_size=100)
    again = load_dataset("digits", batch_size=100)
    assert (data.train_size, data.test_size) == (1437, 360)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (3, 32, 32)
    assert torch.equal(data.test_labels, again.test_labels)  # fixed-seed split
    assert set(data.train_labels.tolist()) == set(range(10))
    x, y, raw = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == (100, 3, 32, 32) and raw.min() >= 0 and raw.max() <= 1
    assert torch.allclose(x, (raw - 0.5) / 0.5)
    assert sum(len(y) for _, y, _ in data.test()) == 360


def test_augmentation_is_a_reflect_padded_crop_and_flip():
    info, _ = parse_dataset("cifar10")
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    data = DeviceBatches(info, 6, "cpu", images, torch.zeros(6), images, torch.zeros(6))
    raw = images.float() / 255
    out = data.augment(raw, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 9, (2, 6), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4), mode="reflect")
    for i in range(6):
        r, c = offsets[0, i].item(), offsets[1, i].item()
        expected = padded[i, :, r : r + 8, c : c + 8]
        expected = expected.flip(2) if flips[i] else expected
        assert torch.equal(out[i], expected)


def test_synthetic_takes_a_shape():
    data = load_dataset("synthetic:3x48x40", batch_size=16)
    x, y, _ = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == (16, 3, 48, 40) and data.info.num_classes == 10
    with pytest.raises(DataError, match="synthetic:3x224x224"):
        parse_dataset("synthetic:big")


def test_unknown_dataset_lists_the_names():
    with pytest.raises(DataError, match="unknown dataset 'mnist'; choose one of cifar10, cifar100"):
        load_dataset("mnist", batch_size=8)


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 is not under .*; pass --download"):
        load_dataset("cifar10", batch_size=8, data_dir=tmp_path)


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


def test_imagefolder_streams_through_a_loader(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(folder / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", batch_size=4, workers=0)
    assert data.info.num_classes == 2 and data.train_size == 6
    x, y, raw = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 224, 224) and raw.max() <= 1
    assert sum(len(y) for _, y, _ in data.test()) == 6


def test_imagefolder_needs_train_and_test(tmp_path):
    with pytest.raises(DataError, match="needs train/ and test/"):
        load_dataset(f"imagefolder:{tmp_path}", batch_size=4)
