"""contsup.data.augment: timm's training transform on the datasets streamed from disk."""

import pytest
import torch

from contsup.data import DataError, load_dataset
from contsup.data.augment import check_augment, timm_train_transform, use_timm_augment
from contsup.errors import ConfigError
from tests.contsup.data.folders import image_folder


@pytest.mark.parametrize("augment", ["timm", "trivialaugment", "rand-m9-mstd0.5-inc1"])
def test_timm_augmentation_gives_images_in_0_1_of_the_run_size(tmp_path, augment):
    data = load_dataset(f"imagefolder:{image_folder(tmp_path, images=2)}", batch_size=4, workers=0)
    use_timm_augment(data, augment, random_erasing=0.5)
    assert "RandomResizedCrop" in repr(data.train_set.transform)
    torch.manual_seed(0)
    x, y, raw = next(data.train(torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 224, 224) and raw.min() >= 0 and raw.max() <= 1
    assert torch.allclose(data.normalise(raw), x)


def test_random_erasing_is_in_the_transform_only_when_asked(tmp_path):
    data = load_dataset(f"imagefolder:{image_folder(tmp_path, images=2)}", batch_size=4, workers=0)
    transform = timm_train_transform(data.info, None, random_erasing=1.0)
    assert "RandomErasing" in repr(transform)
    plain = timm_train_transform(data.info, None, random_erasing=0.0)
    assert "RandomErasing" not in repr(plain)


def test_the_test_split_keeps_its_center_crop(tmp_path):
    data = load_dataset(f"imagefolder:{image_folder(tmp_path, images=2)}", batch_size=4, workers=0)
    before = repr(data.test_set.transform)
    use_timm_augment(data, "rand-m9-mstd0.5-inc1", 0.25)
    assert repr(data.test_set.transform) == before


def test_a_dataset_on_the_device_refuses_timm_augmentation():
    data = load_dataset("digits", batch_size=4)
    with pytest.raises(DataError, match="digits is augmented on the device"):
        use_timm_augment(data, "timm", 0.0)
    use_timm_augment(data, None, 0.0)  # nothing asked: nothing changes


@pytest.mark.parametrize(
    "augment,erasing,message",
    [
        ("randaugment", 0.0, "augmentation 'randaugment' .an unknown policy."),
        ("rand-x9", 0.0, "Unknown RandAugment config section"),
        (None, 1.5, "random_erasing is a probability"),
    ],
)
def test_augmentation_timm_cannot_build_is_one_sentence(augment, erasing, message):
    with pytest.raises(ConfigError, match=message):
        check_augment(augment, erasing)
