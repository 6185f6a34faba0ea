"""Step checkpoints, stopping at SIGTERM or SIGUSR1, and resuming mid-epoch bitwise."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest
import torch

from contsup.checkpoint import CheckpointError, load_checkpoint
from contsup.preemption import PREEMPTED_EXIT_CODE
from contsup.runs import open_run
from contsup.trainer import Preempted, TrainConfig, train
from tests.conftest import checkpoint_tensors

# 512 images in batches of 128: 4 steps an epoch; digits draw a random crop per image.
SMALL = TrainConfig(
    model="resnet20",
    k=2,
    dataset="digits",
    train_images=512,
    test_images=64,
    batch_size=128,
    lr=0.1,
    warmup_epochs=0,
    epochs=2,
    device="cpu",
    threads=1,  # runs compared bitwise must use the same thread count
    tensorboard=False,
)
STEPS = 4
# timm's recipe pieces: mixup, cutmix and label smoothing, a timm optimizer, timm's cosine.
TIMM_PIECES = replace(
    SMALL, optimizer="adamw", schedule="timm:cosine", warmup_epochs=0.5, lr=1e-3,
    weight_decay=0.05, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
)  # fmt: skip


def metrics(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        del record["seconds"], record["images_per_s"]
    return records


def assert_same_run(out, reference):
    assert metrics(out) == metrics(reference)
    ours, theirs = checkpoint_tensors(out), checkpoint_tensors(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(replace(SMALL, out=str(out)))
    return out


def test_checkpoint_every_n_steps_keeps_the_last_and_the_best(tmp_path):
    seen = []

    def on_step(step, steps, losses, images_per_s):
        pointer = tmp_path / "checkpoint.json"
        state = json.loads(pointer.read_text()) if pointer.exists() else {}
        kept = {state.get("tensors"), (state.get("best") or {}).get("tensors")}
        seen.append((state.get("tensors"), kept, {p.name for p in tmp_path.glob("checkpoint-e*")}))

    train(replace(SMALL, out=str(tmp_path), checkpoint_every=3), on_step=on_step)
    # Every 3rd step of 8, but not an epoch's last step: the epoch's own checkpoint follows.
    committed = [tensors for tensors, _, _ in seen]
    assert committed == [None, None] + ["checkpoint-e0001-s000003"] * 2 + [
        "checkpoint-e0001"
    ] + ["checkpoint-e0002-s000002"] * 3  # fmt: skip
    for _, kept, folders in seen:
        assert folders <= kept  # the last checkpoint's tensors and the best epoch's, no more
    state = load_checkpoint(tmp_path)
    final = {p.name for p in tmp_path.glob("checkpoint-e*")}
    assert final == {"checkpoint-e0002", state["best"]["tensors"]}
    assert "partial_epoch" not in state


@pytest.mark.parametrize("stop_at,epoch,step", [(4, 1, 3), (7, 2, 2)])
def test_a_run_killed_after_a_step_checkpoint_resumes_bitwise(
    tmp_path, uninterrupted, stop_at, epoch, step
):
    config = replace(SMALL, out=str(tmp_path), checkpoint_every=3)
    steps = []

    def killed(step, *_):  # as a SIGKILL would: the steps since the checkpoint are lost
        steps.append(step)
        if len(steps) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=killed)
    partial = load_checkpoint(tmp_path)["partial_epoch"]
    assert (partial["epoch"], partial["step"]) == (epoch, step)
    resumed = []
    train(config, resume=True, on_step=lambda step, *_: resumed.append(step))
    assert resumed[0] == partial["step"] + 1  # no batch is trained twice
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])  # lamb counts steps per group
def test_a_run_with_timm_pieces_killed_mid_epoch_resumes_bitwise(tmp_path, optimizer):
    config = replace(TIMM_PIECES, optimizer=optimizer, out=str(tmp_path / "run"))
    reference = tmp_path / "uninterrupted"
    train(replace(config, out=str(reference)))
    steps = []

    def killed(step, *_):
        steps.append(step)
        if len(steps) == 7:  # epoch 2, step 3: the step checkpoint after its step 2 survives
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(replace(config, checkpoint_every=3), on_step=killed)
    partial = load_checkpoint(config.out)["partial_epoch"]
    assert (partial["epoch"], partial["step"]) == (2, 2)
    train(replace(config, checkpoint_every=3), resume=True)
    assert_same_run(tmp_path / "run", reference)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_checkpoints_after_the_step_and_resumes_bitwise(
    tmp_path, uninterrupted, name
):
    number = getattr(signal, name)
    before = signal.getsignal(number)
    steps = []

    def signalled(step, *_):
        steps.append(step)
        if len(steps) == 5:  # after epoch 2's first step
            os.kill(os.getpid(), number)

    config = replace(SMALL, out=str(tmp_path))
    with pytest.raises(Preempted, match=f"stopped by {name} after epoch 2, step 2, .*--resume"):
        train(config, on_step=signalled)
    assert signal.getsignal(number) is before  # the handlers were train's only while it ran
    state = load_checkpoint(tmp_path)
    assert state["tensors"] == "checkpoint-e0002-s000002" and state["epoch"] == 1
    train(config, resume=True)
    assert_same_run(tmp_path, uninterrupted)


def test_a_step_checkpoint_before_any_epoch_ended_reads_as_any_checkpoint(tmp_path):
    config = replace(SMALL, out=str(tmp_path), checkpoint_every=2)

    def killed(step, *_):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=killed)
    assert load_checkpoint(tmp_path)["partial_epoch"]["step"] == 2
    # Read as any checkpoint (`contsup eval`): the weights after step 2, no epoch ended yet.
    assert open_run(tmp_path).state["epoch"] == 0
    with pytest.raises(CheckpointError, match="no best epoch .none has ended yet"):
        load_checkpoint(tmp_path, best=True)


def test_sigterm_to_contsup_train_checkpoints_and_exits_75(tmp_path, uninterrupted):
    recipe = tmp_path / "small.yaml"
    fields = {k: v for k, v in vars(SMALL).items() if v is not None and k in (
        "model", "k", "dataset", "train_images", "test_images", "batch_size", "lr",
        "warmup_epochs", "epochs", "device", "threads", "tensorboard")}  # fmt: skip
    recipe.write_text(json.dumps(fields))  # JSON is YAML
    out = tmp_path / "run"
    command = [sys.executable, "-m", "contsup", "train", "--recipe", str(recipe), "--out", str(out)]
    log = tmp_path / "stdout.txt"
    with open(log, "w") as stdout:
        victim = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoint.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 2
        victim.send_signal(signal.SIGTERM)
        victim.wait(timeout=120)
    finally:
        victim.kill()
        victim.wait()
    said = " ".join(log.read_text().split())
    assert victim.returncode == PREEMPTED_EXIT_CODE, said
    stopped = re.search(
        r"stopped by SIGTERM after epoch (\d+), step (\d+), with a checkpoint", said
    )
    assert stopped, said
    epoch, step = int(stopped[1]), int(stopped[2])
    state = load_checkpoint(out)
    if (epoch, step) == (1, STEPS):  # the signal came before epoch 2 began: its checkpoint
        assert state["epoch"] == 1 and "partial_epoch" not in state
    else:
        assert state["epoch"] == 1 and state["partial_epoch"]["epoch"] == 2
        assert state["partial_epoch"]["step"] == step
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(out) == metrics(uninterrupted)


def test_a_checkpoint_from_before_timms_pieces_resumes_as_a_run_without_them(tmp_path):
    from contsup.checkpoint_manager import check_same_run

    config = replace(SMALL, out=str(tmp_path))
    saved = asdict(config)
    for name in ("optimizer", "augment", "random_erasing", "mixup", "cutmix", "label_smoothing"):
        del saved[name]  # what contsup wrote before these fields existed
    check_same_run({"config": saved, "epoch": 1}, config, tmp_path / "checkpoint.json")
    with pytest.raises(CheckpointError, match="mixup was 0.0, now 0.8"):
        check_same_run({"config": saved, "epoch": 1}, replace(config, mixup=0.8), tmp_path)
