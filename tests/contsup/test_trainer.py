"""contsup.trainer: runs, resume, checkpoints and their failures."""

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from contsup.checkpoint import (
    CheckpointError,
    checkpoint_entries,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
)
from contsup.trainer import TrainConfig, TrainingDiverged, build, train

FAST = dict(
    model="resnet20",
    k=2,
    context="E",
    dataset="digits",
    batch_size=128,
    lr=0.1,
    warmup_epochs=0,
    device="cpu",
    threads=1,  # runs compared bitwise must use the same thread count
)


def test_learns_digits(tmp_path):
    summary = train(TrainConfig(**{**FAST, "k": 4, "batch_size": 64}, epochs=6, out=str(tmp_path)))
    assert summary["test_accuracy"] >= 0.90
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == list(range(1, 7))
    assert set(records[0]) == {
        "epoch",
        "train_loss",
        "segment_train_losses",
        "train_accuracy",
        "head_train_accuracies",
        "test_accuracy",
        "test_loss",
        "head_test_accuracies",
        "head_test_losses",
        "lr",
        "seconds",
        "images_per_s",
        "peak_memory_bytes",
    }
    assert records[-1]["train_accuracy"] > 0.8 and records[-1]["head_train_accuracies"][0] > 0.3
    assert len(records[0]["segment_train_losses"]) == 4
    # Each local head scores its boundary on the test split; the first learns something.
    heads = records[-1]["head_test_accuracies"]
    assert len(heads) == 3 and all(0 <= a <= 1 for a in heads) and heads[0] > 0.3
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_accuracy,test_accuracy,test_loss,lr")
    assert "segment_train_loss_3" in header and "head_train_accuracy_2" in header
    assert header.endswith("head_test_loss_2")


def test_a_fixed_subset_of_the_data(tmp_path):

    config = TrainConfig(**{**FAST, "k": 1}, epochs=1, train_images=100, test_images=50)
    _, data, _ = build(config)
    assert (data.train_size, data.test_size) == (100, 50)
    assert sum(len(y) for _, y, _ in data.train(torch.Generator())) == 100
    summary = train(replace(config, out=str(tmp_path)))
    assert summary["head_test_accuracies"] == []  # K=1: no local heads, plain backprop


def run_cli(out, *extra, wait=True):
    args = [
        sys.executable,
        "-m",
        "contsup.cli",
        "train",
        "resnet20",
        "--k",
        "2",
        "--context",
        "E",
        "--dataset",
        "digits",
        "--batch-size",
        "128",
        "--lr",
        "0.1",
        "--warmup-epochs",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--json",
        *extra,
    ]
    if wait:
        return subprocess.run(args, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def without_timing(path):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        del r["seconds"], r["images_per_s"]
    return records


def test_kill_and_resume_gives_the_same_metrics(tmp_path):
    whole = run_cli(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    assert json.loads(whole.stdout.splitlines()[-1])["epochs"] == 3

    victim = run_cli(tmp_path / "killed", wait=False)
    checkpoint = tmp_path / "killed" / "checkpoint.json"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well into epoch 2
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "killed")["epoch"] in (1, 2)
    assert not list((tmp_path / "killed").glob(".*tmp"))

    resumed = run_cli(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(tmp_path / "killed" / "metrics.jsonl") == without_timing(
        tmp_path / "whole" / "metrics.jsonl"
    )


def test_nan_loss_stops_with_segment_and_step(tmp_path, monkeypatch):
    import contsup.trainer as trainer

    real_build = trainer.build

    def poisoned_build(config):
        learner, data, device = real_build(config)
        calls = []

        def poison(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) == 3 else output

        learner.segments[1].register_forward_hook(poison)
        return learner, data, device

    monkeypatch.setattr(trainer, "build", poisoned_build)
    config = TrainConfig(**FAST, epochs=1, out=str(tmp_path))
    with pytest.raises(TrainingDiverged, match=r"loss of segment 1 became nan at epoch 1, step 3;"):
        train(config)
    assert not (tmp_path / "checkpoint.json").exists()


def test_existing_run_is_never_overwritten(tmp_path):
    (tmp_path / "checkpoint.json").write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="pass --resume"):
        train(TrainConfig(**FAST, epochs=1, out=str(tmp_path)))
    assert (tmp_path / "checkpoint.json").read_bytes() == b"precious"


def test_threads_are_set_and_shared_by_the_processes_of_a_machine(tmp_path, monkeypatch):
    from contsup.building import default_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # so the run must set it to FAST's one thread
        train(TrainConfig(**FAST, epochs=1, train_images=64, test_images=32,
                          out=str(tmp_path)))  # fmt: skip
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    alone = default_threads()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_threads() == max(1, alone // 2)
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 64.0, 64.0))
    assert default_threads() == 1  # a busy machine: one thread, never zero


def test_resume_of_a_directory_without_a_checkpoint_refuses(tmp_path):
    for out in (tmp_path / "empty", tmp_path / "typo"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(CheckpointError, match="cannot resume: .* holds no checkpoint.json"):
            train(TrainConfig(**FAST, epochs=1, out=str(out)), resume=True)
        assert not (out / "checkpoint.json").exists()


def test_a_finished_run_says_how_to_train_longer(tmp_path):
    train(TrainConfig(**FAST, epochs=1, out=str(tmp_path), train_images=200, test_images=50))
    with pytest.raises(CheckpointError, match="run of 1 epochs.*start a new run .* --epochs 2"):
        config = TrainConfig(**FAST, epochs=2, out=str(tmp_path), train_images=200, test_images=50)
        train(config, resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.json").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        train(TrainConfig(**FAST, epochs=1, out=str(tmp_path)), resume=True)


class RunsCode:
    """Unpickling this would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_in_checkpoints_never_run(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    # An old contsup's checkpoint.pt is a pickle: refused, never loaded.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "checkpoint.pt").write_bytes(pickle.dumps({"version": 1, "x": RunsCode(marker)}))
    with pytest.raises(CheckpointError, match="unpickling it could run code"):
        train(TrainConfig(**FAST, epochs=1, out=str(legacy)), resume=True)
    # DCP's .metadata is a pickle too: read with an allow-list of DCP's own types.
    run = tmp_path / "run"
    save_checkpoint(run, {"learner.w": torch.ones(3)}, {"epoch": 1})
    folder = run / load_checkpoint(run)["tensors"]
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointError, match="open is not part of a DCP checkpoint"):
        load_tensors(run, load_checkpoint(run), {"learner.w": torch.zeros(3)})
    assert not marker.exists()


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    train(TrainConfig(**FAST, epochs=1, out=str(tmp_path)))
    with pytest.raises(CheckpointError, match="different run: k was 2, now 3"):
        train(TrainConfig(**{**FAST, "k": 3}, epochs=2, out=str(tmp_path)), resume=True)


def test_a_failed_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    save_checkpoint(tmp_path, {"learner.w": torch.ones(3)}, {"epoch": 1})

    def crash(state_dict, storage_writer):
        Path(storage_writer.path).mkdir(parents=True, exist_ok=True)
        (Path(storage_writer.path) / "__0_0.distcp").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(dcp, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"learner.w": torch.zeros(3)}, {"epoch": 2})
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and set(checkpoint_entries(tmp_path, state)) == {"learner.w"}
    loaded = {"learner.w": torch.empty(3)}
    load_tensors(tmp_path, state, loaded)
    assert torch.equal(loaded["learner.w"], torch.ones(3))
    assert not list(tmp_path.glob(".*tmp"))


def test_bf16_autocast_step_runs():
    from contsup.learner import wrap
    from tests.conftest import create

    learner = wrap(create("resnet20"), 3, context="R1E")
    dtypes = []
    for segment in learner.segments:
        segment.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    step = learner.local_backward(x, y, autocast=torch.bfloat16)
    assert dtypes == [torch.bfloat16] * 3
    assert all(math.isfinite(v) for v in step.losses)
    # The parameters stay float32 and receive float32 gradients.
    grads = [p.grad for p in learner.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
