"""``contsup plan``, ``train --memory``, and out-of-memory errors said in one sentence."""

import json

import torch
from typer.testing import CliRunner

from contsup.cli import app
from contsup.learner import LocalLearner

runner = CliRunner()


# The thin modules: at 32 px the default's (the paper's) need more than these small budgets.
THIN = ("--aux", "scaled")


def run(*args):
    return runner.invoke(app, list(args))


def plan_json(memory, *extra):
    result = run("plan", "resnet20", "--memory", memory, "--batch-size", "32", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plan_json_has_the_k_the_alternatives_the_largest_batch_and_the_floor():
    data = plan_json("30MiB", "--device", "cpu", "--context", "R1E", *THIN)
    assert data["k"] > 1 and len(data["cuts"]) == data["k"] - 1
    assert data["peak"]["total"] <= data["memory_bytes"] == 30 * 2**20
    assert data["end_to_end"]["total"] > data["memory_bytes"]
    assert data["checkpoint"]["total"] > 0 and data["context"] == "R1E"
    assert data["max_batch_size"] >= 32
    assert data["floor_bytes"] < data["peak"]["total"]
    assert data["uncalibrated"] == []  # planned for the CPU: nothing left unmeasured


def test_plan_table_names_the_choice_and_the_alternatives():
    result = run("plan", "resnet20", "--memory", "30MiB", "--batch-size", "32", *THIN)
    assert result.exit_code == 0, result.output
    for words in ("end-to-end", "gradient checkpointing", "largest batch", "floor", "cuda"):
        assert words in result.output, words


def test_a_budget_below_the_floor_exits_2_with_one_sentence():
    result = run("plan", "resnet20", "--memory", "1MiB", "--batch-size", "32")
    assert result.exit_code == 2
    assert "below the floor of" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "cannot be cut" in result.output


def test_a_bad_context_is_named_not_taken_for_a_budget_too_small():
    result = run("plan", "resnet20", "--memory", "1GiB", "--batch-size", "32", "--context", "X")
    assert result.exit_code == 2 and "no K fits" not in result.output
    assert "X" in result.output


def test_a_saved_plan_trains_with_train_plan(tmp_path):
    path = tmp_path / "plan.json"
    result = run(
        "plan", "resnet20", "--memory", "30MiB", "--batch-size", "32", "--save", str(path),
        "--device", "cpu", *THIN,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    k = json.loads(path.read_text())["memory_plan"]["k"]
    trained = run(
        "train", "resnet20", "--plan", str(path), "--dataset", "synthetic", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", *THIN,
        "--out", str(tmp_path / "run"), "--no-tensorboard", "--json",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert len(json.loads(trained.stdout.strip().splitlines()[-1])["segment_train_losses"]) == k


def test_train_memory_plans_for_itself_and_says_what_it_chose(tmp_path):
    expected = plan_json("30MiB", "--device", "cpu", *THIN)
    trained = run(
        "train", "resnet20", "--memory", "30MiB", "--dataset", "synthetic", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", *THIN,
        "--out", str(tmp_path / "run"), "--no-tensorboard", "--json",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert f"planned for 30.0 MiB: K={expected['k']}" in trained.stderr
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert len(summary["segment_train_losses"]) == expected["k"]


def test_train_memory_refuses_cuts_beside_it(tmp_path):
    result = run(
        "train", "resnet20", "--memory", "30MiB", "--cuts", "layer1_0_act2", "--dataset",
        "synthetic", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.exit_code == 2 and "not both" in result.output


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _unit_out_of_memory(learner, j, x, *args):
    """``LocalLearner._run_unit`` running out of memory on a real device; the planner's
    walk of the same step on the meta device (which cannot run out) goes on."""
    if x.device.type == "meta":
        return _RUN_UNIT(learner, j, x, *args)
    _out_of_memory()


_RUN_UNIT = LocalLearner._run_unit


def test_out_of_memory_in_train_is_one_sentence_with_the_segment_step_and_fit(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(LocalLearner, "_run_unit", _unit_out_of_memory)
    result = run(
        "train", "resnet20", "--k", "2", "--dataset", "synthetic", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu",
        "--out", str(tmp_path / "run"), "--no-tensorboard",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert "out of memory in segment 0 at epoch 1, step 1 of resnet20 at K=2" in message
    assert "predicted peak" in message and "`contsup plan` says K=1 fits batch 32" in message


def test_out_of_memory_in_bench_names_the_configuration(monkeypatch):
    import contsup.bench

    monkeypatch.setattr(contsup.bench, "measure_memory", _out_of_memory)
    result = run("bench", "resnet20", "--k", "2", "--context", "E", "--batch-size", "4")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "out of memory in a step of end-to-end of resnet20 batch 4" in message
    assert "Traceback" not in result.output and "`contsup plan` says" in message


def test_a_cpu_run_beyond_the_machines_memory_is_refused_before_it_starts(tmp_path, monkeypatch):
    import contsup.devices

    monkeypatch.setattr(contsup.devices, "device_memory", lambda device: 2**20)
    out = tmp_path / "run"
    result = run(
        "train", "resnet20", "--k", "2", "--dataset", "synthetic", "--device", "cpu",
        "--batch-size", "32", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "more than this machine's 1.0 MiB" in " ".join(result.output.split())
    assert not out.exists()


def test_out_of_memory_in_a_local_bench_row_names_the_segment(monkeypatch):
    monkeypatch.setattr(LocalLearner, "_run_unit", _unit_out_of_memory)
    result = run("bench", "resnet20", "--k", "2", "--context", "E", "--batch-size", "4")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "out of memory in segment 0 of floor R0 at K=2 of resnet20 batch 4" in message
