"""Saved runs: per-segment metrics, TensorBoard, eval, export, plot, safe loading."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import contsup
from contsup.building import build_learner
from contsup.checkpoint import (
    CheckpointError,
    _decode,
    load_checkpoint,
)
from contsup.cli import app
from contsup.data import Batches, parse_dataset
from contsup.runs import ExportError, RawImageNetwork, open_run
from contsup.trainer import TrainConfig, train
from tests.conftest import checkpoint_tensors

runner = CliRunner()

CONFIG = TrainConfig(
    model="resnet20",
    k=3,
    context="R1E",
    dataset="digits",
    train_images=200,
    test_images=100,
    batch_size=64,
    epochs=3,
    lr=0.1,
    warmup_epochs=0,
    device="cpu",
    threads=1,  # runs compared bitwise must use the same thread count
)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def without_timing(records: list[dict]) -> list[dict]:
    drop = ("seconds", "images_per_s", "peak_memory_bytes")
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    train(replace(CONFIG, out=str(out), tensorboard=True))
    return out


def test_metrics_have_every_segment_train_and_test(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert len(last["segment_train_losses"]) == 3
    for name in ("head_train_accuracies", "head_test_accuracies", "head_test_losses"):
        assert len(last[name]) == 2, name
    for name in ("train_accuracy", "test_accuracy", *last["head_train_accuracies"]):
        value = last[name] if isinstance(name, str) else name
        assert 0 <= value <= 1
    assert last["test_loss"] > 0 and all(v > 0 for v in last["head_test_losses"])
    assert last["peak_memory_bytes"] > 0  # bytes saved for backward, on the CPU
    header = (trained / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"head_train_accuracy_1", "head_test_loss_1", "peak_memory_bytes"} <= set(header)


def test_tensorboard_events_hold_the_metrics(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for split in ("train", "test"):
        for what in ("loss", "accuracy"):
            assert {f"{split}/{what}/segment_{i}" for i in range(3)} <= tags
    assert {"lr", "images_per_s", "epoch_seconds", "peak_memory_bytes"} <= tags
    last = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    logged = events.Scalars("test/accuracy/segment_0")
    assert [e.step for e in logged] == [1, 2, 3]
    assert logged[-1].value == pytest.approx(last["head_test_accuracies"][0])
    assert events.Scalars("test/accuracy/segment_2")[-1].value == pytest.approx(
        last["test_accuracy"]
    )


def test_eval_reproduces_the_last_epoch(trained):
    result = run("eval", trained, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    last = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["epoch"] == 3 and report["test_images"] == 100
    assert report["test_accuracy"] == last["test_accuracy"]
    assert report["head_accuracies"] == last["head_test_accuracies"]
    other = run("eval", trained, "--dataset", "synthetic:3x16x16", "--device", "cpu")
    assert other.exit_code == 2 and "the run was trained on 10 of (3, 32, 32)" in other.output


def test_the_best_epoch_is_kept_and_evaluated(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["test_accuracy"])
    state = load_checkpoint(trained)
    assert state["best"]["epoch"] == best["epoch"]
    kept = {p.name for p in trained.glob("checkpoint-e*")}
    assert kept == {f"checkpoint-e{e:04d}" for e in (best["epoch"], records[-1]["epoch"])}
    result = run("eval", trained, "--best", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["epoch"] == best["epoch"]
    assert report["test_accuracy"] == best["test_accuracy"]
    assert report["head_accuracies"] == best["head_test_accuracies"]


@pytest.mark.parametrize("fmt", ["safetensors", "pt2", "onnx"])
def test_export_gives_the_same_logits(trained, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    result = run("export", trained, "--format", fmt, "--out", out, "--normalized-input")
    assert result.exit_code == 0, result.output
    assert "it takes images normalised by mean (0.5000, 0.5000, 0.5000), std" in result.output
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's example
    expected = open_run(trained).learner.eval()(x)
    if fmt == "safetensors":
        net = contsup.load(out)
        assert not any(name.startswith("heads") for name in net.state_dict())
        assert torch.equal(net(x), expected)
    elif fmt == "pt2":
        assert torch.allclose(torch.export.load(str(out)).module()(x), expected, atol=1e-5)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out))
        (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)


def test_export_errors_are_one_sentence(trained, tmp_path):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep")
    result = run("export", trained, "--out", taken)
    assert result.exit_code == 2 and "exists; pass --force" in result.output
    assert taken.read_bytes() == b"keep"
    assert run("export", trained, "--out", taken, "--force").exit_code == 0
    assert contsup.load(taken) is not None
    unknown = run("export", trained, "--format", "tflite")
    assert unknown.exit_code == 2 and "unknown format 'tflite'" in unknown.output
    empty = run("export", tmp_path, "--out", tmp_path / "m.safetensors")
    assert empty.exit_code == 2 and f"no checkpoint in {tmp_path}" in empty.output
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ExportError):
        contsup.load(corrupt)
    for result in (unknown, empty):
        assert "Traceback" not in result.output


def test_missing_extras_name_what_to_install(trained, tmp_path, monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    result = run("export", trained, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2 and "pip install 'contsup[onnx]'" in result.output
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(Exception, match=r"pip install 'contsup\[tb\]'"):
        train(replace(CONFIG, out=str(tmp_path / "tb"), epochs=1, tensorboard=True))
    assert not (tmp_path / "tb" / "checkpoint.json").exists()
    train(replace(CONFIG, out=str(tmp_path / "auto"), epochs=1))  # auto: no TensorBoard
    assert not list((tmp_path / "auto").glob("events.out.tfevents.*"))


def test_plot_draws_a_run(trained, tmp_path):
    result = run("plot", trained, "--out", tmp_path / "acc.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = run("plot", tmp_path)
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_metrics_of_contsup_0_3_plot_and_resume_under_todays_names(trained, tmp_path):
    old_names = dict(segment_train_losses="segment_losses", head_test_accuracies="head_accuracies")
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    today = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    old = [{old_names.get(k, k): v for k, v in r.items()} for r in today]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    state = json.loads((copy / "checkpoint.json").read_text())
    state["metrics"] = old
    (copy / "checkpoint.json").write_text(json.dumps(state))
    assert run("plot", copy, "--out", tmp_path / "acc.png").exit_code == 0
    summary = train(replace(CONFIG, out=str(copy)), resume=True)  # nothing left to train
    assert summary["head_test_accuracies"] == today[-1]["head_test_accuracies"]
    rewritten = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert rewritten == today


class RunsCode:
    """Unpickling this would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoints_are_refused_and_never_run(trained, tmp_path):
    marker = tmp_path / "pwned"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    payload = {"version": 1, "config": asdict(CONFIG), "x": RunsCode(marker)}
    (legacy / "checkpoint.pt").write_bytes(pickle.dumps(payload))
    result = run("eval", legacy)
    assert result.exit_code == 2 and "could run code" in result.output
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    folder = copy / load_checkpoint(copy)["tensors"]
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    for args in (["eval", copy], ["export", copy, "--out", tmp_path / "m.safetensors"]):
        result = run(*args)
        assert result.exit_code == 2 and "is not part of a DCP checkpoint" in result.output
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_tensor_file_is_one_sentence_everywhere(trained, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    (tensor_file,) = (copy / load_checkpoint(copy)["tensors"]).glob("*.distcp")
    data = tensor_file.read_bytes()
    tensor_file.write_bytes(data[:1000] if damage == "truncate" else b"garbage")
    config = asdict(replace(CONFIG, out=str(copy)))
    recipe = tmp_path / "run.yaml"
    recipe.write_text(json.dumps({"description": "the trained run", **config}))  # YAML reads JSON
    commands = [
        ["eval", copy],
        ["export", copy, "--out", tmp_path / "m.safetensors"],
        ["train", "--recipe", recipe, "--resume"],
    ]
    for args in commands:
        result = run(*args)
        assert result.exit_code == 2, (args[0], result.output)
        assert "is damaged or cut short" in result.output and "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0] == result.output.strip().splitlines()[-1]
    assert not (tmp_path / "m.safetensors").exists()


def test_a_checkpoint_naming_an_unknown_model_is_one_sentence(trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    state = json.loads((copy / "checkpoint.json").read_text())
    state["config"]["model"] = "no_such_model"
    (copy / "checkpoint.json").write_text(json.dumps(state))
    result = run("eval", copy)
    assert result.exit_code == 2 and "describes a model that cannot be built" in result.output


def test_a_checkpoint_of_contsup_0_1_is_converted_and_resumes(tmp_path):
    """Write what contsup 0.1 wrote after epoch 1 (one torch.save pickle of tensors,
    numbers and lists), resume from it, and end where an uninterrupted run ends."""
    whole = train(replace(CONFIG, out=str(tmp_path / "whole")))
    stopped = replace(CONFIG, out=str(tmp_path / "old"))

    def stop(metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(stopped, on_epoch=stop)
    out = Path(stopped.out)
    state = load_checkpoint(out)
    tensors = checkpoint_tensors(out)
    learner = build_learner(CONFIG, parse_dataset("digits")[0])
    names = [name for name, _ in learner.named_parameters()]
    rng = state["rng"]
    version, numbers, gauss = rng["python"]
    old = {
        "version": 1,
        "config": state["config"],
        "epoch": state["epoch"],
        "learner": {n[8:]: t for n, t in tensors.items() if n.startswith("learner.")},
        "optimizer": {
            "state": {
                i: {"momentum_buffer": tensors[f"optimizer.{n}.momentum_buffer"]}
                for i, n in enumerate(names)
            },
            "param_groups": [{"lr": 0.1, "params": list(range(len(names)))}],
        },
        "rng": {
            "torch": _decode(rng["torch"]),
            "python": (version, tuple(numbers), gauss),
            "data": _decode(rng["data"]),
        },
        "metrics": state["metrics"],
    }
    for path in out.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    torch.save(old, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="different run: k was 3, now 2"):
        train(replace(stopped, k=2), resume=True)
    assert not (out / "checkpoint.json").exists()  # nothing converted for the wrong run
    random.seed(1)  # the checkpoint's random state, not this, decides what comes next
    resumed = train(stopped, resume=True)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    assert without_timing(records) == without_timing([json.loads(line) for line in expected])
    assert (out / "checkpoint.pt").exists()  # kept; the run now has a checkpoint.json too


@pytest.mark.parametrize("fmt", ["safetensors", "pt2", "onnx"])
def test_an_export_takes_raw_images_and_gives_the_trained_logits(trained, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    result = run("export", trained, "--format", fmt, "--out", out)  # raw input by default
    assert result.exit_code == 0, result.output
    assert "it takes images in [0, 1]" in result.output
    saved = open_run(trained)
    images = torch.rand(5, 3, 32, 32)  # another batch size than the export's example
    x = Batches(saved.info, 5, "cpu").normalise(images)  # as training normalised them
    expected = saved.learner.eval()(x)
    if fmt == "safetensors":
        net = contsup.load(out)
        assert isinstance(net, RawImageNetwork)
        assert torch.equal(net(images), expected)
        assert torch.equal(contsup.load(out, raw_input=False)(x), expected)
    elif fmt == "pt2":
        logits = torch.export.load(str(out)).module()(images)
        assert torch.allclose(logits, expected, atol=1e-5)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out))
        (logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)


def test_an_export_of_contsup_0_2_still_takes_normalised_images(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    new = tmp_path / "new.safetensors"
    assert run("export", trained, "--out", new).exit_code == 0
    with safe_open(str(new), framework="pt") as file:
        recipe = json.loads(file.metadata()["contsup"])
    del recipe["input"]  # the rest of the header is what contsup 0.2 wrote
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(new)), str(old), metadata={"contsup": json.dumps(recipe)})
    saved = open_run(trained)
    images = torch.rand(5, 3, 32, 32)
    x = Batches(saved.info, 5, "cpu").normalise(images)
    expected = saved.learner.eval()(x)
    net = contsup.load(old)
    assert not isinstance(net, RawImageNetwork) and torch.equal(net(x), expected)
    assert torch.equal(contsup.load(old, raw_input=True)(images), expected)


def test_a_run_of_contsup_0_2_rebuilds_its_gained_bridges(tmp_path):
    """0.2's scaled bridges had a gain: its runs evaluate, export and load as trained,
    and refuse to resume under today's bridges rather than silently drop the gain."""
    from contsup.runs import with_legacy_design

    out = tmp_path / "old"
    config = replace(CONFIG, epochs=1, aux="scaled-0.2", out=str(out))
    train(config)
    state = json.loads((out / "checkpoint.json").read_text())
    state["config"]["aux"] = "scaled"  # what 0.2 wrote: its scaled design had the gain
    (out / "checkpoint.json").write_text(json.dumps(state))
    assert with_legacy_design(replace(CONFIG, aux="scaled"), ["network.bridges.0.gain"]).aux == (
        "scaled-0.2"
    )
    run_ = open_run(out)
    assert run_.config.aux == "scaled-0.2"
    assert any(name.endswith("bridges.0.gain") for name, _ in run_.learner.named_parameters())
    assert run("export", out, "--out", tmp_path / "m.safetensors").exit_code == 0
    x = torch.randn(4, *parse_dataset("digits")[0].image_size)
    loaded = contsup.load(tmp_path / "m.safetensors", raw_input=False)
    assert torch.equal(loaded(x), run_.learner.eval()(x))
    with pytest.raises(CheckpointError, match="trained by contsup 0.2"):
        train(replace(CONFIG, epochs=1, aux="scaled", out=str(out)), resume=True)
