"""contsup.bench: measured and predicted memory of each training mode."""

import json
import math

import pytest
import timm
import torch
from typer.testing import CliRunner

from contsup.auxiliary import DEFAULT_DESIGN
from contsup.bench import run_bench, time_interleaved
from contsup.cli import app


@pytest.fixture(scope="module")
def rows():
    return run_bench(
        lambda: timm.create_model("resnet32", num_classes=10),
        ks=[16],
        contexts=["R0", "R1"],
        batch_size=8,
        input_size=(3, 32, 32),
        num_classes=10,
        steps=1,
    )


def test_local_k16_peak_is_below_end_to_end(rows):
    e2e = next(r for r in rows if r.mode == "e2e")
    for r in rows:
        if r.mode in ("local", "floor"):
            assert r.activation_bytes < 0.5 * e2e.activation_bytes, r
            assert r.peak_bytes < e2e.peak_bytes, r
    checkpoint = next(r for r in rows if r.mode == "checkpoint")
    assert checkpoint.activation_bytes < e2e.activation_bytes


def test_prediction_is_within_ten_percent_on_cpu(rows):
    for r in rows:
        assert abs(r.predicted_peak_bytes / r.peak_bytes - 1) < 0.10, r


def test_static_bytes_are_parameters_gradients_and_momentum(rows):
    params = sum(p.numel() for p in timm.create_model("resnet32", num_classes=10).parameters())
    e2e = next(r for r in rows if r.mode == "e2e")
    assert e2e.static_bytes == 3 * 4 * params
    assert e2e.peak_bytes == e2e.static_bytes + e2e.activation_bytes


def test_every_row_is_timed(rows):
    for r in rows:
        assert math.isfinite(r.step_time_s) and r.step_time_s > 0, r
        assert r.images_per_s == pytest.approx(8 / r.step_time_s), r


def test_without_interleaving_each_configuration_is_timed_when_built():
    built, finished = [], []
    rows = run_bench(
        lambda: timm.create_model("resnet20", num_classes=10),
        ks=[2],
        contexts=["R1"],
        batch_size=4,
        input_size=(3, 32, 32),
        num_classes=10,
        steps=1,
        interleave=False,  # a GPU's default
        on_built=built.append,
        on_row=finished.append,
    )
    assert [r.mode for r in rows] == ["e2e", "checkpoint", "floor", "local"]
    assert all(math.isnan(r.step_time_s) for r in built)  # memory first, then time
    assert finished == rows and all(r.step_time_s > 0 for r in rows)


def test_configurations_are_timed_in_rounds():
    calls = []
    steps = [lambda name=name: calls.append(name) for name in "abc"]
    times = time_interleaved(steps, torch.device("cpu"), rounds=3)
    assert calls == list("abc") * 3  # one step of each per round, not three in a row
    assert len(times) == 3 and all(t >= 0 for t in times)


def test_bench_json_schema():
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "resnet20",
            "--k",
            "2,4",
            "--context",
            "R0,E",
            "--batch-size",
            "4",
            "--steps",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"device", "torch", "model", "batch_size", "rows"} <= set(data)
    assert data["device"] == "cpu" and data["batch_size"] == 4
    keys = {
        "mode",
        "k",
        "context",
        "peak_bytes",
        "activation_bytes",
        "step_time_s",
        "images_per_s",
        "predicted_peak_bytes",
    }
    assert all(keys <= set(r) for r in data["rows"])
    assert [(r["mode"], r["k"], r["context"], r["head"]) for r in data["rows"]] == [
        ("e2e", 1, None, None),
        ("checkpoint", 2, None, None),
        ("floor", 2, "R0", "0c1f"),
        ("local", 2, "R0", "1c2f"),
        ("local", 2, "E", "1c2f"),
        ("checkpoint", 4, None, None),
        ("floor", 4, "R0", "0c1f"),
        ("local", 4, "R0", "1c2f"),
        ("local", 4, "E", "1c2f"),
    ]
    local = [r for r in data["rows"] if r["mode"] in ("floor", "local")]
    assert all(0 <= r["aux_params_fraction"] < 1 and r["aux"] == DEFAULT_DESIGN for r in local)
    # Momentum heads (the default here): at K=2 the one local head borrows the classifier
    # through its shadow, so R0 adds no parameters there; every other row adds some.
    assert all(r["aux_params_fraction"] > 0 for r in local if (r["k"], r["context"]) != (2, "R0"))
    floor, e = data["rows"][2], data["rows"][4]
    assert floor["aux_flops_fraction"] < e["aux_flops_fraction"]
    assert all(r["step_time_s"] > 0 and r["images_per_s"] > 0 for r in data["rows"])


def test_bench_momentum_heads_can_be_turned_off():
    """Their cost shows as the context rows' aux FLOPs; the floor never has them."""

    def flops(*more):
        args = ["bench", "resnet20", "--k", "4", "--context", "R0", "--batch-size", "4"]
        result = CliRunner().invoke(app, [*args, "--steps", "1", "--json", *more])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout.strip().splitlines()[-1])
        return data["momentum_heads"], [r["aux_flops_fraction"] for r in data["rows"][2:]]

    (auto, (floor, with_shadows)), (off, (floor_off, plain)) = (
        flops(),
        flops("--momentum-heads", "off"),
    )
    assert (auto, off) == ("auto", "off") and floor == floor_off
    assert with_shadows > plain > floor


@pytest.mark.parametrize(
    "args,message",
    [
        (["bench", "resnt20"], "unknown model"),
        (["bench", "resnet20", "--k", "two"], "--k takes comma-separated integers"),
        (["bench", "resnet20", "--k", "0"], "integers >= 1"),
        (["bench", "resnet20", "--context", "R1,Q"], "unknown context mode 'Q'"),
        (["bench", "resnet20", "--device", "cuda"], "no CUDA GPU"),
        (["bench", "resnet20", "--objective", "time"], "not time"),
        (["bench", "resnet20", "--momentum-heads", "1.5"], "decay in [0, 1), got 1.5"),
        (
            ["bench", "resnet20", "--k", "99", "--steps", "1", "--batch-size", "2"],
            "between 1 and 14",
        ),
    ],
)
def test_bench_user_errors(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
