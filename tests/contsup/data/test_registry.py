"""contsup.data.registry: dataset names."""

import pytest

from contsup.data import DataError, load_dataset


def test_unknown_dataset_lists_the_names():
    with pytest.raises(
        DataError, match="unknown dataset 'imagenet'; choose one of cifar10, cifar100"
    ):
        load_dataset("imagenet", batch_size=8)
