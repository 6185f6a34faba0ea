"""contsup.data.imagefolder: streamed image folders."""

import pytest
import torch

from contsup.data import DataError, load_dataset
from tests.contsup.data.folders import image_folder


def test_imagefolder_streams_through_a_loader(tmp_path):
    data = load_dataset(f"imagefolder:{image_folder(tmp_path)}", batch_size=4, workers=0)
    assert data.info.num_classes == 2 and data.train_size == 6
    x, y, raw = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 224, 224) and raw.max() <= 1
    assert sum(len(y) for _, y, _ in data.test()) == 6


def test_imagefolder_needs_train_and_test(tmp_path):
    with pytest.raises(DataError, match="needs train/ and test/"):
        load_dataset(f"imagefolder:{tmp_path}", batch_size=4)
