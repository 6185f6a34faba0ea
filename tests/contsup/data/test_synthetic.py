"""contsup.data.synthetic: shaped random data."""

import pytest
import torch

from contsup.data import DataError, load_dataset, parse_dataset


def test_synthetic_takes_a_shape():
    data = load_dataset("synthetic:3x48x40", batch_size=16)
    x, y, _ = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == (16, 3, 48, 40) and data.info.num_classes == 10
    with pytest.raises(DataError, match="synthetic:3x224x224"):
        parse_dataset("synthetic:big")
