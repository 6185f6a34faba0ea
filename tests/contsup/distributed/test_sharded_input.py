"""Sharded input: each training image is decoded once per epoch in the whole world,
and the run is still one process's (bitwise with one replica, within float tolerance
with several), resumed mid-epoch included.

The ranks run ``decode_worker`` on a JPEG folder made here; every rank logs each
image it decodes. gloo on 127.0.0.1, with deadlines; what starts is killed.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import checkpoint_tensors
from tests.contsup.distributed.test_pipeline import REPO, Ranks, environment, without_timing

WORKER = ["-m", "tests.contsup.distributed.decode_worker"]
EPOCHS = 2  # decode_worker's


def jpeg_folder(root: Path) -> Path:
    """14 training images (batches of 6, 6 and 2) and 6 test images, two classes."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 7), ("test", 3)):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=g)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.jpg", quality=90)
    return root


def one_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *WORKER, *args], env=environment(), cwd=REPO, timeout=240,
        capture_output=True, text=True,
    )  # fmt: skip


def ranks(world: int, *args: str, logs: Path) -> None:
    started = Ranks([*WORKER, *args], world, logs / "out")
    codes = started.wait(timeout=300)
    assert codes == [0] * world, "\n".join(started.log(r)[-2000:] for r in range(world))


def decoded(logs: Path) -> tuple[Counter, Counter]:
    """How often each training and each test image was decoded, over every rank's log."""
    paths = [line for log in logs.glob("rank*.txt") for line in log.read_text().splitlines()]
    train = Counter(p for p in paths if "/train/" in p)
    return train, Counter(p for p in paths if "/test/" in p)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return jpeg_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory) -> Path:
    """The single-process run every sharded run must equal."""
    root = tmp_path_factory.mktemp("one")
    result = one_process(str(folder), str(root / "run"), str(root / "logs"), "1")
    assert result.returncode == 0, result.stderr[-3000:]
    train, test = decoded(root / "logs")
    assert len(train) == 14 and set(train.values()) == {EPOCHS}
    assert len(test) == 6 and set(test.values()) == {EPOCHS}  # one evaluation an epoch
    return root / "run"


def assert_close(run: Path, reference: Path, tolerance: float) -> None:
    ours, theirs = without_timing(run), without_timing(reference)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs]
    for mine, ref in zip(ours, theirs):
        assert mine.keys() == ref.keys()
        for key, value in mine.items():
            if isinstance(value, float):
                assert abs(value - ref[key]) <= tolerance, (key, value, ref[key])
    mine, ref = checkpoint_tensors(run), checkpoint_tensors(reference)
    assert mine.keys() == ref.keys()
    gap = max((mine[n].double() - ref[n].double()).abs().max().item() for n in mine)
    assert gap <= tolerance, gap


def test_two_stages_decode_each_image_once_and_equal_one_process(folder, reference, tmp_path):
    ranks(2, str(folder), str(tmp_path / "run"), str(tmp_path / "logs"), "2", logs=tmp_path)
    train, test = decoded(tmp_path / "logs")
    assert len(train) == 14 and set(train.values()) == {EPOCHS}
    assert len(test) == 6 and set(test.values()) == {EPOCHS}
    assert not (tmp_path / "logs" / "rank1.txt").exists()  # the second stage decodes nothing
    assert without_timing(tmp_path / "run") == without_timing(reference)
    mine, theirs = checkpoint_tensors(tmp_path / "run"), checkpoint_tensors(reference)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)


def test_two_stages_of_two_replicas_decode_each_image_once(folder, reference, tmp_path):
    ranks(4, str(folder), str(tmp_path / "run"), str(tmp_path / "logs"), "2", logs=tmp_path)
    train, test = decoded(tmp_path / "logs")
    assert len(train) == 14 and set(train.values()) == {EPOCHS}  # 4 ranks, one decode each
    assert len(test) == 6 and set(test.values()) == {EPOCHS}
    # Ranks 0 and 2 are the first stages of replicas 0 and 1: they split every batch.
    logs = tmp_path / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["rank0.txt", "rank2.txt"]
    assert_close(tmp_path / "run", reference, 1e-5)


def test_a_step_checkpoint_resumes_on_two_replicas_decoding_only_the_rest(
    folder, reference, tmp_path
):
    run, logs = tmp_path / "run", tmp_path / "logs"
    stopped = one_process(str(folder), str(run), str(tmp_path / "before"), "1", "stop")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    ranks(4, str(folder), str(run), str(logs), "2", "resume", logs=tmp_path)
    train, _ = decoded(logs)
    # Stopped after step 2 of epoch 1 (batches of 6, 6, 2): its last 2 images, then all 14.
    assert sum(train.values()) == 2 + 14 and len(train) == 14
    assert sorted(train.values()) == [1] * 12 + [2] * 2
    assert_close(run, reference, 1e-5)


def test_a_decoders_target_reaches_the_second_stage_bitwise(folder, tmp_path):
    from contsup.building import build_learner
    from contsup.data import imagefolder
    from contsup.distributed import Needs, stage_bounds, unit_costs
    from tests.contsup.distributed.decode_worker import SIZE, run_config

    config = run_config(str(folder), "unused", 2, "decoder")
    info, _ = imagefolder._folder("counted", str(folder))
    learner = build_learner(config, replace(info, image_size=SIZE))
    first_stage = range(0, stage_bounds(unit_costs(learner), 2)[1])
    assert Needs.after(learner, first_stage).raw  # the decoders' target goes on the wire

    one, two = tmp_path / "one", tmp_path / "two"
    alone = one_process(str(folder), str(one / "run"), str(one / "logs"), "1", "decoder")
    assert alone.returncode == 0, alone.stderr[-3000:]
    ranks(2, str(folder), str(two / "run"), str(two / "logs"), "2", "decoder", logs=two)
    assert not (two / "logs" / "rank1.txt").exists()
    assert without_timing(two / "run") == without_timing(one / "run")
    mine, theirs = checkpoint_tensors(two / "run"), checkpoint_tensors(one / "run")
    assert any("decoders" in n for n in mine)
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)
