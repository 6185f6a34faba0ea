"""contsup.data parts: each rank decodes its slice of the batches one process draws."""

import pytest
import torch

from contsup.data import DeviceBatches, LoaderBatches, Part, load_dataset, parse_dataset
from contsup.data.seeded import SeededSamples
from tests.contsup.data.folders import image_folder


class Recorded(torch.utils.data.Dataset):
    """Images that record which of them were read; with ``augmented``, a random number
    drawn per read is added to them (test splits draw nothing)."""

    def __init__(self, size: int, augmented: bool = True):
        self.size, self.augmented, self.read = size, augmented, []

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        self.read.append(i)
        image = torch.full((3, 2, 2), float(i))
        return (image + torch.rand(1) if self.augmented else image), i


def loader_batches(size=11, batch_size=4):
    info, _ = parse_dataset("synthetic:3x2x2")
    return LoaderBatches(info, batch_size, "cpu", Recorded(size), Recorded(5, False), workers=0)


def device_batches():
    info, _ = parse_dataset("cifar10")  # pad 4 and flip: every image draws a crop
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(11)
    return DeviceBatches(info, 4, "cpu", images, labels, images[:5], labels[:5])


def parts_of_every_replica(data, replicas: int, skip: int = 0):
    """Each replica's parts of one epoch, from generators seeded alike."""
    return [
        list(data.train_parts(torch.Generator().manual_seed(1), Part(r, replicas), skip))
        for r in range(replicas)
    ]


@pytest.mark.parametrize("make", [device_batches, loader_batches])
def test_the_replicas_parts_make_one_process_batches_bitwise(make):
    data = make()
    whole = list(data.train(torch.Generator().manual_seed(1)))
    parts = parts_of_every_replica(data, 3)
    assert len(whole) == 3 and all(len(p) == 3 for p in parts)
    for step, (x, y, raw) in enumerate(whole):
        # The last batch has 3 images: one each; the full ones split 2, 1, 1.
        mine = [p[step] for p in parts]
        assert all(m.total == len(y) for m in mine)
        assert torch.equal(torch.cat([m.x for m in mine]), x)
        assert torch.equal(torch.cat([m.y for m in mine]), y)
        assert torch.equal(torch.cat([m.raw for m in mine]), raw)
    tests = [list(data.test_parts(Part(r, 2))) for r in range(2)]
    for step, (x, _, _) in enumerate(data.test()):
        # 5 test images: batches of 4 and 1, the second replica's part of the last empty.
        mine = [p[step].x for p in tests if p[step].x is not None]
        assert torch.equal(torch.cat(mine), x) and len(mine) == (2 if step == 0 else 1)


def test_each_sample_is_read_once_by_the_replica_whose_slice_holds_it():
    data = loader_batches()
    reads = []
    for r in range(3):
        data.train_set.read = []
        list(data.train_parts(torch.Generator().manual_seed(1), Part(r, 3)))
        reads.append(list(data.train_set.read))
    assert sorted(i for read in reads for i in read) == list(range(11))
    data.train_set.read = []
    nothing = list(data.train_parts(torch.Generator().manual_seed(1), Part(0, 1, loads=False)))
    assert data.train_set.read == [] and [p.total for p in nothing] == [4, 4, 3]
    assert all(p.x is None and p.y is None for p in nothing)


@pytest.mark.parametrize("make", [device_batches, loader_batches])
def test_skipped_batches_are_drawn_not_decoded(make):
    data = make()
    g = torch.Generator().manual_seed(1)
    whole = iter(data.train(g))
    trained = [next(whole) for _ in range(2)]
    after_two = g.get_state()
    rest = next(whole)
    skipping = torch.Generator().manual_seed(1)
    if isinstance(data, LoaderBatches):
        data.train_set.read = []
    parts = data.train_parts(skipping, Part(), skip=2)
    assert torch.equal(skipping.get_state(), after_two)  # drawn when called, as trained
    (part,) = list(parts)
    assert torch.equal(part.x, rest[0]) and torch.equal(part.y, rest[1])
    if isinstance(data, LoaderBatches):
        assert sorted(data.train_set.read) == sorted(rest[1].tolist())  # only the last batch
    assert len(trained) == 2


def test_a_samples_augmentation_does_not_depend_on_the_workers():
    info, _ = parse_dataset("synthetic:3x2x2")
    seen = []
    for workers in (0, 2):
        data = LoaderBatches(info, 4, "cpu", Recorded(11), Recorded(5, False), workers=workers)
        torch.manual_seed(workers)  # the global random state plays no part either
        seen.append([x for x, _, _ in data.train(torch.Generator().manual_seed(1))])
    assert all(torch.equal(a, b) for a, b in zip(*seen))


def test_seeded_samples_leave_the_random_state_as_it_was():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    samples = SeededSamples(Recorded(4), torch.tensor([3, 1]), torch.tensor([7, 7]))
    first, second = samples[0][0], samples[1][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first - 3, second - 1)  # the same seed, the same draw


def test_imagefolder_parts_of_two_replicas_are_one_process_batches(tmp_path):
    folder = image_folder(tmp_path, suffix="jpg")
    data = load_dataset(f"imagefolder:{folder}", batch_size=4, workers=0)
    (x, y, raw), _ = list(data.train(torch.Generator().manual_seed(0)))
    parts = [next(data.train_parts(torch.Generator().manual_seed(0), Part(r, 2))) for r in (0, 1)]
    assert torch.equal(torch.cat([p.x for p in parts]), x)
    assert torch.equal(torch.cat([p.raw for p in parts]), raw)
