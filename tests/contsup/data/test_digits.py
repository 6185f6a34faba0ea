"""contsup.data.digits: the offline demo dataset."""

import torch

from contsup.data import load_dataset


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
