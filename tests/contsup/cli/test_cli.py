"""The command line: every command's output, JSON schema and user errors."""

import json
import subprocess
import sys

import pytest
import timm
from typer.testing import CliRunner

from contsup.auxiliary import DEFAULT_DESIGN
from contsup.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_split_table():
    result = run("split", "resnet20", "--k", "4")
    assert result.exit_code == 0, result.output
    assert "resnet20 in 4 segments" in result.output
    assert "imbalance" in result.output and "NCHW" in result.output


def test_split_json_schema():
    result = run(
        "split", "resnet20", "--k", "3", "--batch-size", "8", "--objective", "memory", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"model", "k", "objective", "imbalance", "segments"}
    assert (data["model"], data["k"], data["objective"]) == ("resnet20", 3, "memory")
    assert data["imbalance"] >= 1.0
    assert len(data["segments"]) == 3
    for i, segment in enumerate(data["segments"]):
        assert set(segment) == {
            "index",
            "first_node",
            "last_node",
            "params",
            "flops",
            "activation_bytes",
            "output_shape",
        }
        assert segment["index"] == i and segment["output_shape"][0] == 8
        assert segment["flops"] > 0 and segment["activation_bytes"] > 0 and segment["params"] > 0
    assert data["segments"][-1]["output_shape"] == [8, 10]  # resnet20's default: CIFAR-10
    model = timm.create_model("resnet20")
    assert sum(s["params"] for s in data["segments"]) == sum(p.numel() for p in model.parameters())


def test_split_saves_a_plan_and_a_plot(tmp_path):
    plan, plot = tmp_path / "plan.json", tmp_path / "cost.png"
    result = run("split", "resnet20", "--k", "4", "--save", str(plan), "--plot", str(plot))
    assert result.exit_code == 0, result.output
    saved = json.loads(plan.read_text())
    assert saved["model"] == "resnet20" and len(saved["cuts"]) == 3
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*"))


def test_split_any_timm_model_with_input_size():
    args = ["vit_tiny_patch16_224", "--k", "12", "--batch-size", "1", "--json"]
    result = run("split", *args, "--input-size", "3", "224", "224")
    assert result.exit_code == 0, result.output
    shapes = [s["output_shape"] for s in json.loads(result.output)["segments"][:-1]]
    assert shapes == [[1, 197, 192]] * 11
    result = run("split", "resnet20", "--input-size", "3", "64", "64", "--json", "--k", "2")
    assert json.loads(result.output)["segments"][0]["output_shape"][2:] in ([64, 64], [32, 32])


@pytest.mark.parametrize(
    "args,message",
    [
        (["split", "resnt110"], "unknown model 'resnt110'; did you mean resnet110"),
        (["split", "resnet20", "--k", "0"], "--k must be at least 1"),
        (["split", "resnet20", "--k", "500"], "between 1 and 14"),
        (["split", "resnet20", "--objective", "speed"], "unknown objective 'speed'"),
        (["split", "resnet20", "--batch-size", "0"], "--batch-size must be at least 1"),
        (
            ["split", "vit_tiny_patch16_224", "--input-size", "3", "64", "64"],
            "rejects an input of shape",
        ),
        (["models", "nothing_like_this*"], "no model matches"),
        (["split", "resnet20", "--context", "R1E", "--aux", "bogus"], "unknown aux design"),
        (["bench", "resnet20", "--aux", "bogus"], "unknown aux design 'bogus'"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_models_lists_cifar_resnets():
    result = run("models", "resnet1*")
    assert result.exit_code == 0
    names = result.output.split()
    assert "resnet110" in names and "resnet1202" in names and "resnet20" not in names
    listed = json.loads(run("models", "resnet1*", "--json").output)
    assert listed == {"pattern": "resnet1*", "models": names}


def test_split_plans_for_grayscale_inputs_and_train_takes_the_plan(tmp_path):
    plan = tmp_path / "plan.json"
    result = run(
        "split", "resnet20", "--k", "2", "--input-size", "1", "8", "8", "--save", str(plan)
    )
    assert result.exit_code == 0, result.output
    trained = run(
        "train", "resnet20", "--plan", str(plan), "--dataset", "synthetic:1x8x8", "--epochs",
        "1", "--batch-size", "32", "--out", str(tmp_path / "run"), "--no-tensorboard", "--json",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert len(json.loads(trained.stdout.strip().splitlines()[-1])["segment_train_losses"]) == 2


def test_train_prints_its_plan_first_and_progress_lines_when_not_a_terminal(tmp_path, monkeypatch):
    import contsup.cli

    monkeypatch.setattr(contsup.cli.train, "PROGRESS_SECONDS", 0.0)
    result = run(
        "train", "resnet20", "--k", "2", "--dataset", "synthetic", "--epochs", "1",
        "--batch-size", "32", "--threads", "1", "--out", str(tmp_path / "run"), "--no-tensorboard",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("resnet20 K=2, context E") and "with 1 threads" in lines[0]
    assert any(line.startswith("step 1/") for line in lines)


def test_models_matches_a_bare_word_anywhere_in_the_name():
    names = run("models", "resnet").output.split()
    assert "resnet110" in names and "resnet50" in names and "seresnet50" in names
    assert "vit_small_patch16_224" not in names
    assert run("models", "resnet").output.split() == run("models", "*resnet*").output.split()


def test_console_script_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "contsup.cli", "split", "nope_net"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown model 'nope_net'" in proc.stderr and "Traceback" not in proc.stderr


def test_untraceable_model_exits_2(monkeypatch):
    from tests.partitioner.test_plan import WithDynamicBlock

    model = WithDynamicBlock()
    model.pretrained_cfg = {"input_size": (4,)}
    monkeypatch.setattr("contsup.planning.create_model", lambda name, **options: model)
    result = run("split", "dynamic", "--k", "2")
    assert result.exit_code == 2
    assert "cannot trace module 'gate' (DataDependent)" in " ".join(result.output.split())


def test_train_recipe_with_overrides_prints_json_last(tmp_path):
    out = tmp_path / "run"
    result = run(
        "train",
        "--recipe",
        "recipes/digits.yaml",
        "--epochs",
        "1",
        "--k",
        "2",
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["epochs"] == 1 and summary["out_dir"] == str(out)
    assert len(summary["segment_train_losses"]) == 2
    assert (out / "checkpoint.json").exists() and (out / "metrics.csv").exists()


def test_train_multi_run_recipe_selects_a_run(tmp_path):
    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        "description: two runs\nmodel: resnet20\ndataset: digits\nepochs: 1\n"
        f"batch_size: 256\ndevice: cpu\nout: {tmp_path / 'two'}\nruns:\n  - {{name: a, k: 2}}\n"
        "  - {name: b, k: 3, context: R1}\n"
    )
    result = run(
        "train", "--recipe", str(recipe), "--run", "b", "--json", "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["out_dir"].endswith("two/b") and len(summary["segment_train_losses"]) == 3


def test_each_run_of_a_recipe_gets_its_own_directory_under_out(tmp_path):
    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        "description: two runs\nmodel: resnet20\ndataset: digits\nepochs: 1\ntrain_images: 128\n"
        "test_images: 64\nbatch_size: 64\ndevice: cpu\nruns:\n  - {name: a, k: 1}\n"
        "  - {name: b, k: 2, context: R1}\n"
    )
    out = tmp_path / "out"
    result = run("train", "--recipe", str(recipe), "--out", str(out), "--no-tensorboard")
    assert result.exit_code == 0, result.output
    assert (out / "a" / "checkpoint.json").exists() and (out / "b" / "checkpoint.json").exists()
    again = run("train", "--recipe", str(recipe), "--run", "b", "--out", str(out), "--resume")
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "resnt20"], "unknown model 'resnt20'"),
        (["train", "resnet20", "--context", "R1X"], "unknown context mode 'R1X'"),
        (["train", "resnet20", "--head", "9x"], "unknown head '9x'"),
        (["train", "resnet20", "--dataset", "imagenet1k"], "unknown dataset 'imagenet1k'"),
        (["train", "resnet20", "--aux", "bogus"], "unknown aux design 'bogus'"),
        (["train", "resnet20", "--cuts", "layer9_9_act2"], "'layer9_9_act2' is not a cut point"),
        (["train", "resnet20", "--plan", "/nonexistent/plan.json"], "cannot read plan"),
        (
            ["train", "resnet20", "--dataset", "cifar10", "--data-dir", "/nonexistent/x"],
            "pass --download",
        ),
        (["train", "resnet20", "--k", "99"], "between 1 and 14"),
        (["train", "resnet20", "--amp", "fp16"], "--amp takes bf16"),
        (["train", "resnet20", "--device", "cuda"], "no CUDA GPU"),
        (["train", "--recipe", "recipes/digits.yaml", "--run", "x"], "no run named 'x'"),
        (["train", "--recipe", "recipes/nope.yaml"], "cannot read recipe"),
        (["train", "resnet20", "--checkpoint-every", "0"], "takes a number of steps >= 1, got 0"),
        (["train", "resnet20", "--checkpoint-every", "-5"], "steps >= 1, got -5"),
        (["train", "resnet20", "--optimizer", "adamx"], "unknown optimizer 'adamx'"),
        (["train", "resnet20", "--schedule", "timm:nope"], "unknown schedule 'timm:nope'"),
        (["train", "resnet20", "--augment", "rand-x9"], "timm cannot build the augmentation"),
        (["train", "resnet20", "--augment", "randaugment"], "augmentation 'randaugment'"),
        (["train", "resnet20", "--random-erasing", "2"], "random_erasing is a probability"),
        (["train", "resnet20", "--augment", "timm"], "digits is augmented on the device"),
        (
            ["train", "resnet20", "--mixup", "0.8", "--local-loss", "contrast"],
            "'contrast' local loss needs hard labels",
        ),
    ],
)
def test_train_user_errors_exit_2(args, message, tmp_path):
    result = run(*args, "--out", str(tmp_path / "out"), "--epochs", "1")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_bug_is_not_mistaken_for_a_user_error(tmp_path, monkeypatch):
    """Only ContsupError and PartitionError are one sentence and exit 2; a ValueError
    from a bug inside the trainer keeps its traceback."""
    import contsup.trainer

    def broken(*args, **kwargs):
        raise ValueError("Expected input batch_size (4) to match target batch_size (3)")

    monkeypatch.setattr(contsup.trainer, "train", broken)
    result = run("train", "resnet20", "--dataset", "digits", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "batch_size" in str(result.exception) and "error:" not in result.output


def test_train_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "checkpoint.json").write_bytes(b"keep me")
    result = run("train", "resnet20", "--dataset", "digits", "--out", str(tmp_path))
    assert result.exit_code == 2 and "pass --resume" in result.output
    assert (tmp_path / "checkpoint.json").read_bytes() == b"keep me"


def test_split_reports_the_aux_budget():
    result = run("split", "resnet32", "--k", "4", "--context", "R1E", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["context"], data["aux"], data["head"]) == ("R1E", DEFAULT_DESIGN, "1c2f")
    assert data["momentum_heads"] == 0.99  # the default's at 32 px: momentum heads
    segments = data["segments"]
    assert segments[0]["bridge_params"] == 0 and segments[-1]["head_params"] == 0
    assert all(s["bridge_params"] > 0 and s["bridge_flops"] > 0 for s in segments[1:])
    # Each head runs the next segment's shadow; the last borrows the classifier.
    assert all(s["head_flops"] > 0 and s["head_saved_bytes"] > 0 for s in segments[:-1])
    assert all(s["head_params"] > 0 for s in segments[:-2]) and segments[-2]["head_params"] == 0
    from contsup.learner import wrap

    cuts = [s["last_node"] for s in segments[:-1]]
    learner = wrap(timm.create_model("resnet32"), context="R1E", cuts=cuts)
    aux_params = sum(
        p.numel() for p in [*learner.bridges.parameters(), *learner.heads.parameters()]
    )
    assert sum(s["bridge_params"] + s["head_params"] for s in segments) == aux_params
    backbone = sum(s["params"] for s in segments)
    assert data["aux_fractions"]["params"] == pytest.approx(aux_params / backbone)
    table = run("split", "resnet32", "--k", "4", "--context", "R1E").output
    assert "heads and bridges add" in table and "aux params" in table


def test_train_takes_a_saved_plan(tmp_path):
    plan = tmp_path / "plan.json"
    assert run("split", "resnet20", "--k", "3", "--save", str(plan)).exit_code == 0
    cuts = json.loads(plan.read_text())["cuts"]
    out = tmp_path / "run"
    args = ["train", "resnet20", "--plan", str(plan), "--dataset", "synthetic", "--epochs", "1"]
    result = run(*args, "--batch-size", "16", "--device", "cpu", "--out", str(out))
    assert result.exit_code == 0, result.output
    from contsup.checkpoint import checkpoint_entries, load_checkpoint

    names = checkpoint_entries(out, load_checkpoint(out))
    assert {k.split(".")[3] for k in names if k.startswith("learner.network.segments.")} == {
        "0",
        "1",
        "2",
    }
    assert len(cuts) == 2
    other = run("train", "resnet32", "--plan", str(plan), "--out", str(tmp_path / "o"))
    assert other.exit_code == 2 and "a plan for resnet20, not resnet32" in other.output
    big = tmp_path / "big.json"
    assert (
        run("split", "resnet20", "--save", str(big), "--input-size", "3", "64", "64").exit_code == 0
    )
    sized = run("train", "resnet20", "--plan", str(big), "--out", str(tmp_path / "s"))
    assert sized.exit_code == 2
    assert "made for inputs of shape (3, 64, 64), not (3, 32, 32)" in " ".join(sized.output.split())


def test_split_context_at_batch_size_one():
    """Batch norm cannot train on one value; aux costs are priced per sample instead."""
    one = run("split", "resnet32", "--k", "4", "--context", "R1E", "--batch-size", "1", "--json")
    two = run("split", "resnet32", "--k", "4", "--context", "R1E", "--batch-size", "2", "--json")
    assert one.exit_code == 0 and two.exit_code == 0, one.output
    first, second = json.loads(one.output)["segments"], json.loads(two.output)["segments"]
    for a, b in zip(first, second):
        assert a["bridge_params"] == b["bridge_params"]
        assert 2 * a["bridge_flops"] == b["bridge_flops"]
