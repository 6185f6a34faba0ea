"""contsup.data.batches: augmentation on device batches."""

import torch

from contsup.data import DeviceBatches, parse_dataset


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
