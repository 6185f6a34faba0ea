"""contsup.data.mnist: MNIST-format datasets (IDX files), resizing, and a one-channel run."""

import gzip
import struct

import numpy as np
import pytest
import torch
import torchvision

import contsup.data
from contsup.data import DataError, load_dataset, parse_dataset
from contsup.trainer import TrainConfig, train


def write_idx(path, array, magic=None):
    """An IDX file: magic number, one big-endian int32 per dimension, then the bytes."""
    magic = magic if magic is not None else 0x800 + array.ndim
    data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_fake_mnist(folder, gz=True, train=64, test=32, seed=0):
    """The four IDX files of a small MNIST-style dataset; returns its arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", train), ("t10k", test)):
        arrays[split] = (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            np.uint8(rng.permutation(n) % 10),
        )
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", arrays[split][0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", arrays[split][1])
    return arrays


def fashion_run(tmp_path, **kwargs):
    write_fake_mnist(tmp_path / "FashionMNIST" / "raw")
    config = TrainConfig(
        model="resnet20",
        k=2,
        dataset="fashion_mnist",
        data_dir=str(tmp_path),
        epochs=1,
        batch_size=16,
        lr=0.05,
        device="cpu",
        out=str(tmp_path / "run"),
        **kwargs,
    )
    return train(config)


@pytest.mark.parametrize(
    "name, folder, gz, mean, flip",
    [
        ("mnist", "MNIST", False, 0.1307, False),
        ("fashion_mnist", "FashionMNIST", True, 0.2860, True),
    ],
)
def test_mnist_datasets_load_from_torchvision_raw_folders(tmp_path, name, folder, gz, mean, flip):
    arrays = write_fake_mnist(tmp_path / folder / "raw", gz=gz)
    data = load_dataset(name, batch_size=16, data_dir=tmp_path)
    assert data.info.image_size == (1, 28, 28) and data.info.num_classes == 10
    assert data.info.mean == (mean,) and len(data.info.std) == 1
    assert (data.info.pad, data.info.flip) == (2, flip)
    assert (data.train_size, data.test_size) == (64, 32)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (64, 1, 28, 28)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(data.test_labels, torch.from_numpy(arrays["t10k"][1]).long())


def test_fashion_mnist_reads_the_system_folder_only_for_the_default_data_dir(tmp_path, monkeypatch):
    arrays = write_fake_mnist(tmp_path / "system")
    monkeypatch.chdir(tmp_path)  # the default data dir, ./data, is empty here
    data = load_dataset("fashion_mnist", batch_size=16)
    assert (data.train_size, data.test_size) == (64, 32)
    assert torch.equal(data.test_images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    # A copy under the data dir comes first.
    local = write_fake_mnist(tmp_path / "data" / "FashionMNIST" / "raw", train=48, seed=1)
    data = load_dataset("fashion_mnist", batch_size=16)
    assert data.train_size == 48
    assert torch.equal(data.train_labels, torch.from_numpy(local["train"][1]).long())
    # A data dir of the user's own, or another dataset, never falls back to it.
    with pytest.raises(DataError, match="is not under"):
        load_dataset("fashion_mnist", batch_size=16, data_dir=tmp_path / "mine")
    with pytest.raises(DataError, match="is not under"):
        load_dataset("mnist", batch_size=16)


def test_mnist_batches_are_normalised_reflect_padded_crops(tmp_path):
    write_fake_mnist(tmp_path / "FashionMNIST" / "raw")
    data = load_dataset("fashion_mnist", batch_size=16, data_dir=tmp_path)
    x, y, raw = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == raw.shape == (16, 1, 28, 28) and x.dtype == raw.dtype == torch.float32
    assert torch.allclose(x, (raw - 0.2860) / 0.3530)
    # Each image is a 28x28 window of its reflect-padded original, perhaps flipped.
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:16]
    assert torch.equal(y, data.train_labels[order])
    padded = torch.nn.functional.pad(data.train_images[order].float() / 255, (2,) * 4, "reflect")
    for i in range(16):
        windows = [padded[i, :, r : r + 28, c : c + 28] for r in range(5) for c in range(5)]
        assert any(torch.equal(raw[i], w) or torch.equal(raw[i], w.flip(2)) for w in windows)
    x, y, raw = next(data.test())
    assert torch.equal(raw, data.test_images[:16].float() / 255)
    assert torch.allclose(x, (raw - 0.2860) / 0.3530) and torch.equal(y, data.test_labels[:16])


@pytest.mark.parametrize(
    "name, side, antialias", [("fashion_mnist", 64, False), ("mnist", 14, True)]
)
def test_size_suffix_resizes_once_at_load(tmp_path, name, side, antialias):
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    arrays = write_fake_mnist(tmp_path / folder / "raw")
    data = load_dataset(f"{name}:{side}", batch_size=16, data_dir=tmp_path)
    assert data.info.name == f"{name}:{side}" and data.info.image_size == (1, side, side)
    assert data.train_images.dtype == torch.uint8
    assert data.train_images.shape == (64, 1, side, side)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(arrays["t10k"][0])[:, None].float(),
        size=(side, side),
        mode="bilinear",
        antialias=antialias,
    )
    assert torch.equal(data.test_images, expected.clamp(0, 255).round().to(torch.uint8))
    x, _, raw = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == raw.shape == (16, 1, side, side)


@pytest.mark.parametrize("name", ["mnist:big", "mnist:", "mnist:4", "fashion_mnist:2048"])
def test_bad_size_suffix_says_what_is_allowed(name):
    base = name.split(":")[0]
    with pytest.raises(DataError, match=f"{base} takes a size from 8 to 1024 like {base}:64"):
        parse_dataset(name)


def test_missing_mnist_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataError) as error:
        load_dataset("mnist", batch_size=8, data_dir=tmp_path)
    assert str(error.value) == (
        f"mnist is not under {tmp_path / 'MNIST' / 'raw'}; pass --download to fetch it "
        "there, or pass --data-dir to point at an existing copy"
    )
    monkeypatch.chdir(tmp_path)
    write_fake_mnist(tmp_path / "system")
    (tmp_path / "system" / "t10k-labels-idx1-ubyte.gz").unlink()  # three files are not enough
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist", batch_size=8)
    assert str(error.value) == (
        f"fashion_mnist is not under data/FashionMNIST/raw or {tmp_path / 'system'}; pass "
        "--download to fetch it there, or run `apt-get install dataset-fashion-mnist`"
    )


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: write_idx(p, np.zeros(64, np.uint8), magic=2051), "magic number 2049"),
        (lambda p: p.write_bytes(p.read_bytes()[:-3]), "cannot read"),
        (lambda p: p.write_bytes(b"not gzip"), "cannot read"),
        (lambda p: write_idx(p, np.zeros(60, np.uint8)), "60 labels for the 64 images"),
        (lambda p: write_idx(p, np.full(64, 10, np.uint8)), "labels outside 0..9"),
    ],
)
def test_malformed_idx_file_is_named(tmp_path, corrupt, message):
    write_fake_mnist(tmp_path / "MNIST" / "raw")
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    corrupt(path)
    with pytest.raises(DataError, match=message) as error:
        load_dataset("mnist", batch_size=8, data_dir=tmp_path)
    assert str(path) in str(error.value)


def test_read_idx_checks_the_size_its_header_promises(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(struct.pack(">4I", 2051, 2, 28, 28) + bytes(28 * 28))
    with pytest.raises(DataError, match="promises 1568 bytes of data, it holds 784"):
        contsup.data.read_idx(path, contsup.data.IDX_IMAGES)


def test_mnist_download_goes_through_torchvision_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):
        calls.append(self.raw_folder)
        write_fake_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)  # torchvision extracts

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", fake_download)
    with pytest.raises(DataError):
        load_dataset("fashion_mnist", batch_size=8, data_dir=tmp_path)
    assert calls == []
    data = load_dataset("fashion_mnist", batch_size=8, data_dir=tmp_path, download=True)
    assert calls == [str(tmp_path / "FashionMNIST" / "raw")] and data.train_size == 64


def test_a_one_channel_dataset_trains_end_to_end(tmp_path):
    """timm's in_chans=1, and the learner's mean/std follow the data's one channel."""
    summary = fashion_run(tmp_path)
    assert summary["epochs"] == 1 and 0 <= summary["test_accuracy"] <= 1
    assert (tmp_path / "run" / "metrics.csv").exists()
