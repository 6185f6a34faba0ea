"""Pipelined local learning: equal to one process, bitwise; faults end the job.

Every multi-process test runs gloo on 127.0.0.1 with a deadline, and kills what
it started before it returns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from contsup.checkpoint import load_checkpoint
from contsup.distributed import DistributedError, init_mesh, stage_bounds, unit_seconds
from contsup.learner import wrap
from contsup.trainer import TrainConfig, train
from tests.conftest import checkpoint_tensors, create

REPO = Path(__file__).resolve().parents[3]

RECIPE = """
model: resnet20
k: 4
context: R1E
dataset: digits
train_images: 500
test_images: 120
batch_size: 96
epochs: 3
lr: 0.1
warmup_epochs: 0
device: cpu
threads: 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra) -> dict:
    # One thread per rank, as torchrun sets it; one process runs the same way.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


class Ranks:
    """WORLD processes of ``args`` with torch.distributed's variables, killed on exit."""

    def __init__(self, args: list[str], world: int, logs: Path):
        port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [logs / f"rank{r}.log" for r in range(world)]
        self.procs = []
        for rank in range(world):
            env = environment(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
            with open(self.logs[rank], "w") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, *args], env=env, stdout=log, stderr=log, cwd=REPO
                    )
                )

    def wait(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.time())) for p in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text()


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "contsup",
        *args,
    ]
    return subprocess.run(
        command, env=environment(), capture_output=True, text=True, timeout=timeout
    )


def contsup(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "contsup", *args]
    return subprocess.run(
        command, env=environment(), capture_output=True, text=True, timeout=timeout
    )


def without_timing(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        del r["seconds"], r["images_per_s"]
    return records


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "digits.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def one_process(recipe, tmp_path_factory) -> Path:
    """The uninterrupted single-process run every pipelined run must equal."""
    out = tmp_path_factory.mktemp("one") / "run"
    result = contsup("train", "--recipe", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_stages_balance_unit_costs():
    assert stage_bounds([1, 1, 1, 1], 2) == [0, 2, 4]
    assert stage_bounds([5, 1, 1, 1, 1, 1], 2) == [0, 1, 6]
    assert stage_bounds([1, 2, 3], 3) == [0, 1, 2, 3]
    with pytest.raises(DistributedError, match="--pipeline 5 needs at least 5 segments"):
        stage_bounds([1, 1, 1, 1], 5)


def test_launch_errors_before_any_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(DistributedError, match="launch with `torchrun --nproc-per-node 2"):
        init_mesh(2)
    assert init_mesh(1) is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(DistributedError, match="world size 3 is not divisible by --pipeline 2"):
        init_mesh(2)


def test_one_process_pipeline_is_the_learner():
    from contsup.distributed import Pipeline, pipeline

    learner = wrap(create("resnet20"), 3, context="R1E", example_input=torch.zeros(2, 3, 16, 16))
    pipe = pipeline(learner)
    assert list(pipe.units) == [0, 1, 2] and pipe.first and pipe.last
    assert {id(p) for p in pipe.parameters()} == {id(p) for p in learner.parameters()}
    assert pipe.state_dict().keys() == learner.state_dict().keys()
    with pytest.raises(DistributedError, match="stages balance cost or time, not 'speed'"):
        pipeline(learner, balance="speed")
    with pytest.raises(DistributedError, match="balance needs 3 unit costs, got 2"):
        Pipeline(learner, balance=[1.0, 2.0])


def test_stages_own_every_state_entry_once_under_the_learners_names():
    import copy

    from contsup.distributed import Stage

    learner = wrap(create("resnet20"), 4, context="R2E", example_input=torch.zeros(2, 3, 16, 16))
    names = list(learner.state_dict())
    params = [n for n, _ in learner.named_parameters()]
    owned, owned_params = [], []
    for units in (range(0, 1), range(1, 3), range(3, 4)):
        stage = Stage(copy.deepcopy(learner), units, torch.device("cpu"))
        owned += stage.state_names
        owned_params += [n for n, _ in stage.named_learner_parameters]
    assert sorted(owned) == sorted(names) and len(owned) == len(set(owned))
    assert sorted(owned_params) == sorted(params)


def test_unit_seconds_leave_the_learner_as_it_was():
    learner = wrap(create("resnet20"), 3, context="R1E", example_input=torch.zeros(2, 3, 16, 16))
    before = {n: t.clone() for n, t in learner.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = unit_seconds(learner, 8, torch.device("cpu"))
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert all(torch.equal(before[n], t) for n, t in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("world,sizes", [(2, [2]), (4, [4, 2])])
def test_pipelined_learner_equals_one_process(tmp_path, world, sizes):
    """P stages (dp=1) are bitwise one process for R0, E, R1E, R2E and R1E with momentum
    heads (their shadows follow weights sent back across stages); dp=2 is close."""
    # Run as a module from the repository: a script's own folder would come first on
    # sys.path, and tests/contsup would shadow the contsup package.
    worker = ["-m", "tests.contsup.distributed.pipeline_worker"]
    ranks = Ranks([*worker, str(tmp_path), *map(str, sizes)], world, tmp_path / "logs")
    codes = ranks.wait(timeout=300)
    assert codes == [0] * world, "\n".join(ranks.log(r)[-2000:] for r in range(world))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for stages in sizes:
        if stages < world:  # replicas of a stage hold replica 0's batch-norm statistics
            rows = [r[f"buffers-P{stages}"] for r in results]
            for row in rows:
                same_stage = [other for other in rows if other["units"] == row["units"]]
                assert len(same_stage) == world // stages and len(row["buffers"]) > 0
                assert all(other["buffers"] == row["buffers"] for other in same_stage), rows
        for name in (n for n in results[0] if n.startswith(f"P{stages}-")):
            rows = [r[name] for r in results]
            if stages == world:
                # Each rank owns different units; together, all of them.
                assert sorted(j for row in rows for j in row["units"]) == [0, 1, 2, 3], name
                for row in rows:
                    assert row["tensors"] > 0
                    assert row["state_equal"] and row["losses_equal"], (name, row)
                    assert row["accuracy_equal"], (name, row)
            else:
                for row in rows:
                    assert row["max_gap"] < 1e-5, (name, row)
                    assert abs(row["accuracy"] - row["ref_accuracy"]) <= 1 / 23, (name, row)


def test_torchrun_pipeline_equals_one_process(recipe, one_process, tmp_path):
    out = tmp_path / "p2"
    result = torchrun(2, "train", "--recipe", str(recipe), "--out", str(out), "--pipeline", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert without_timing(out) == without_timing(one_process)
    assert result.stdout.count("test accuracy") == 1  # only rank 0 reports
    mine, theirs = checkpoint_tensors(out), checkpoint_tensors(one_process)
    assert mine.keys() == theirs.keys()
    assert any(n.startswith("optimizer.") for n in mine)
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)


def test_torchrun_pipeline_with_timms_pieces_equals_one_process(recipe, tmp_path):
    """Mixup, cutmix, label smoothing, LAMB and timm's cosine: every stage mixes the batch
    the same way, so the pipeline stays bitwise one process's."""
    pieces = tmp_path / "pieces.yaml"
    text = recipe.read_text().replace("lr: 0.1\n", "lr: 0.005\n").replace("epochs: 3", "epochs: 2")
    pieces.write_text(
        text + "optimizer: lamb\nschedule: timm:cosine\nmixup: 0.8\ncutmix: 1.0\n"
        "label_smoothing: 0.1\n"
    )
    one, two = tmp_path / "one", tmp_path / "p2"
    result = contsup("train", "--recipe", str(pieces), "--out", str(one), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    p2 = ("train", "--recipe", str(pieces), "--out", str(two), "--pipeline", "2")
    result = torchrun(2, *p2, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert without_timing(two) == without_timing(one)
    mine, theirs = checkpoint_tensors(two), checkpoint_tensors(one)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)
    assert load_checkpoint(two)["optimizer_groups"] == load_checkpoint(one)["optimizer_groups"]


def test_killed_rank_ends_the_job_and_resume_at_another_size(recipe, one_process, tmp_path):
    out = tmp_path / "run"
    args = ["-m", "contsup", "train", "--recipe", str(recipe), "--out", str(out)]
    ranks = Ranks([*args, "--pipeline", "2"], 2, tmp_path / "logs")
    try:
        deadline = time.time() + 180
        while not (out / "checkpoint.json").exists() and time.time() < deadline:
            assert all(p.poll() is None for p in ranks.procs), ranks.log(0)
            time.sleep(0.05)
        killed = time.time()
        ranks.procs[1].send_signal(signal.SIGKILL)
        code = ranks.procs[0].wait(timeout=60)
        assert time.time() - killed < 60
    finally:
        ranks.kill()
    assert code == 1
    log = ranks.log(0)
    assert "error: rank 1 stopped, so rank 0 cannot go on" in log and "Traceback" not in log
    assert load_checkpoint(out)["epoch"] in (1, 2)

    # Saved by two stages, finished by one process: the same run.
    resumed = contsup(*args[2:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(out) == without_timing(one_process)


LOSE_A_PEER = """
import datetime, os, sys, torch, torch.distributed as dist
from contsup.checkpoint import _barrier
from contsup.distributed.replica import Collective
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
if dist.get_rank() == 1:
    os._exit(0)  # gone before the collective, as a killed rank
calls = {
    "all_reduce": lambda: Collective(torch.device("cpu")).all_reduce(torch.ones(1)),
    "barrier": _barrier,
}
try:
    calls[sys.argv[1]]()
except Exception as error:
    print(type(error).__name__, error, flush=True)
os._exit(0)  # a broken process group may abort in its destructor at a normal exit
"""


@pytest.mark.parametrize("call", ["all_reduce", "barrier"])
def test_a_rank_lost_in_a_collective_is_named_in_a_two_rank_world(tmp_path, call):
    # Where a pipeline notices a dead peer outside its p2p: the stop-flag all-reduce,
    # and the barrier after a checkpoint's commit (a peer killed just after it).
    ranks = Ranks(["-c", LOSE_A_PEER, call], 2, tmp_path)
    assert ranks.wait(timeout=120) == [0, 0], ranks.log(0)
    assert "RankLost rank 1 stopped, so rank 0 cannot go on" in ranks.log(0), ranks.log(0)


def test_one_process_checkpoint_resumes_pipelined(recipe, one_process, tmp_path):
    from contsup.recipes import load_recipe

    torch.set_num_threads(1)  # as the ranks and the reference run
    config = TrainConfig(**load_recipe(recipe).base, out=str(tmp_path / "run"))

    def stop_after_first_epoch(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch=stop_after_first_epoch)
    assert load_checkpoint(config.out)["epoch"] == 1
    result = torchrun(
        2, "train", "--recipe", str(recipe), "--out", config.out, "--pipeline", "2", "--resume"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert without_timing(Path(config.out)) == without_timing(one_process)


def test_user_errors_exit_2(recipe, tmp_path):
    outside = contsup("train", "--recipe", str(recipe), "--pipeline", "2", "--out", str(tmp_path))
    assert outside.returncode == 2
    assert "error: --pipeline 2 needs one process per stage" in outside.stderr
    assert "Traceback" not in outside.stderr

    too_many = torchrun(
        2,
        "train",
        "--recipe",
        str(recipe),
        "--k",
        "1",
        "--pipeline",
        "2",
        "--out",
        str(tmp_path / "k1"),
    )
    assert too_many.returncode != 0
    assert "error: --pipeline 2 needs at least 2 segments; the model has 1" in too_many.stderr
    # torchrun reports the workers' exit code 2 (and a traceback of its own, not theirs).
    assert "exitcode  : 2" in too_many.stderr
    assert f'File "{REPO / "contsup"}' not in too_many.stderr


def test_a_signal_to_one_rank_stops_all_at_one_step_and_resumes_at_any_size(
    recipe, one_process, tmp_path
):
    out = tmp_path / "run"
    args = ["-m", "contsup", "train", "--recipe", str(recipe), "--out", str(out)]
    ranks = Ranks([*args, "--pipeline", "2", "--checkpoint-every", "2"], 2, tmp_path / "logs")
    try:
        deadline = time.time() + 180
        while not (out / "checkpoint.json").exists() and time.time() < deadline:
            assert all(p.poll() is None for p in ranks.procs), ranks.log(0)
            time.sleep(0.05)
        ranks.procs[1].send_signal(signal.SIGTERM)  # rank 0 hears of it from rank 1
        codes = ranks.wait(timeout=120)
    finally:
        ranks.kill()
    assert codes == [75, 75], ranks.log(0)[-2000:] + ranks.log(1)[-2000:]
    said = " ".join(ranks.log(0).split())
    assert "stopped by another rank's signal after epoch" in said and "Traceback" not in said
    # Signalled after step 2 of 6: the ranks agree at epoch 1's last step at the latest.
    assert load_checkpoint(out)["partial_epoch"]["epoch"] == 1
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # The same checkpoint resumed mid-epoch pipelined, and in one process.
    pipelined = torchrun(2, *args[2:], "--pipeline", "2", "--resume")
    assert pipelined.returncode == 0, pipelined.stderr[-3000:]
    assert without_timing(out) == without_timing(one_process)
    assert all(torch.equal(t, checkpoint_tensors(one_process)[n])
               for n, t in checkpoint_tensors(out).items())  # fmt: skip
    alone = contsup("train", "--recipe", str(recipe), "--out", str(copy), "--resume")
    assert alone.returncode == 0, alone.stderr
    assert without_timing(copy) == without_timing(one_process)
