"""Does the memory planner's choice fit, and is it the fewest segments that do?

For each model: one end-to-end training step is measured at its batch, then
``contsup.plan`` (context R1E, SGD, ``device="cpu"``) is asked for budgets of
40%, 25% and 15% of that measured peak (or the planner's floor, where that is
higher). Each planned configuration trains one step, measured as ``contsup
bench`` measures on the CPU (bytes saved for backward, plus weights, gradients
and momentum); so does K-1 at its memory-balanced cuts, to see whether fewer
segments would have fitted too. Each step is measured two ways: as bench does,
and as the process's resident high-water mark over the step (which sees every
tensor, transients included). The plan's own time is measured as well.

    OMP_NUM_THREADS=1 python benchmarks/plan.py                     # every setting
    OMP_NUM_THREADS=1 python benchmarks/plan.py --only resnet50     # one setting
    python benchmarks/plan.py --report                              # md only

Each setting is merged into benchmarks/results/plan_cpu.json as soon as it ends;
plan_cpu.md is rewritten from that file.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import timm
import torch

import contsup
import partitioner
from contsup.bench import static_bytes
from contsup.memory import SavedTensorTracker
from contsup.memory_plan import BudgetTooSmallError

RESULTS = Path(__file__).parent / "results"
FRACTIONS = (0.40, 0.25, 0.15)
CONTEXT = "R1E"

SETTINGS = [
    ("regnety_008", (3, 224, 224), 32),
    ("efficientnet_b0", (3, 224, 224), 32),
    ("resnet50", (3, 224, 224), 32),
    ("deit_small_patch16_224", (3, 224, 224), 32),
    ("vit_small_patch16_224", (3, 224, 224), 32),
    ("convnext_tiny", (3, 224, 224), 32),
    ("swin_tiny_patch4_window7_224", (3, 224, 224), 32),
    ("resnet110", (3, 32, 32), 1024),
]


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def measured_peak(model: str, size, batch: int, k: int, cuts=None) -> dict[str, int]:
    """One training step after a warm-up step, measured two ways: as ``contsup bench``
    does (saved for backward + weights, gradients, momentum), and as the process's
    resident memory at its highest during the step, less what it held before, plus
    the weights, momentum and batch it already held (``MALLOC_MMAP_THRESHOLD_`` makes
    freed tensors leave the process at once)."""
    net = timm.create_model(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *size, generator=g)
    y = torch.randint(0, net.num_classes, (batch,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", partitioner.PartitionWarning)
        learner = contsup.wrap(
            net,
            None if cuts is not None else k,
            cuts=cuts,
            context=CONTEXT,
            objective="memory",
            example_input=x,
        )
    params = list(learner.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        learner.local_backward(x, y)
        optimizer.step()

    step()  # creates the momentum buffers
    optimizer.zero_grad(set_to_none=True)
    # Weights and momentum (as many bytes as weights and gradients), and the batch.
    held = static_bytes(params, optimizer) - sum(p.numel() * p.element_size() for p in params)
    held += x.numel() * x.element_size() + y.numel() * y.element_size()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    with SavedTensorTracker(params) as tracker:
        step()
    return {
        "bench": tracker.peak_bytes + static_bytes(params, optimizer),
        "process": _status("VmHWM") - before + held,
    }


def run_setting(model: str, size, batch: int) -> dict:
    name = f"{model}-{size[1]}px-b{batch}"
    print(f"{name}: end-to-end", flush=True)
    e2e = measured_peak(model, size, batch, 1)["bench"]
    floor = contsup.plan(model, memory=e2e * 4, batch_size=batch, device="cpu").floor_bytes
    # Budgets that meet at the floor plan and measure once (steps take long on this machine).
    planned = functools.cache(
        lambda budget: _planned(model, budget, batch)  # (row fields, K, cuts)
    )
    measured = functools.cache(
        lambda k, cuts: measured_peak(model, size, batch, k, list(cuts) if cuts else None)
    )
    rows = []
    for fraction in FRACTIONS:
        budget = max(int(fraction * e2e), floor)
        row = {"fraction": fraction, "budget": "floor" if budget == floor else "fraction"}
        fields, k, cuts = planned(budget)
        row.update(fields)
        row["measured"] = measured(k, cuts)
        row["fewer_measured"] = measured(k - 1, None) if k > 1 else None
        rows.append(row)
        print(f"  {fraction:.0%}: {row}", flush=True)
    return {"name": name, "e2e_measured_bytes": e2e, "rows": rows}


def _planned(model: str, budget: int, batch: int) -> tuple[dict, int, tuple]:
    """The plan for ``budget``, or for the least any K needs where no K meets it."""
    start, cpu = time.perf_counter(), time.process_time()
    fields = {}
    try:
        chosen = contsup.plan(model, memory=budget, batch_size=batch, context=CONTEXT, device="cpu")
    except BudgetTooSmallError as error:
        # The floor leaves out heads and bridges: the least any K needs with them.
        print(f"  {error}", flush=True)
        budget = error.least_bytes
        fields.update(budget="least", refused=str(error))
        chosen = contsup.plan(model, memory=budget, batch_size=batch, context=CONTEXT, device="cpu")
    fields.update(
        budget_bytes=budget,
        plan_s=time.perf_counter() - start,
        # CPU time: on a machine shared with other runs, wall-clock time measures them.
        plan_cpu_s=time.process_time() - cpu,
        k=chosen.k,
        predicted_bytes=chosen.peak.total,
        predicted_saved_static_bytes=chosen.peak.saved + chosen.peak.static,
        checkpoint_predicted_bytes=chosen.checkpoint.total,
        max_batch_size=chosen.max_batch_size,
        floor_bytes=chosen.floor_bytes,
    )
    return fields, chosen.k, tuple(chosen.cuts)


def _cell(measured: dict, key: str) -> str:
    return f"{measured[key] / 2**20:.0f}" if key in measured else "-"


def _cpu_cell(row: dict) -> str:
    return f" ({row['plan_cpu_s']:.1f})" if "plan_cpu_s" in row else ""


def _verdicts(row: dict, measure: str) -> tuple[bool, bool]:
    """(the planned step fits the budget, K-1 would not have) under one measurement."""
    fits = row["measured"][measure] <= row["budget_bytes"]
    fewer = row["fewer_measured"]
    return fits, fewer is None or fewer[measure] > row["budget_bytes"]


def markdown(results: list[dict], stamp: str) -> str:
    mib = 2**20
    lines = [
        f"Measured {stamp}. Context {CONTEXT}, SGD with momentum, cuts balanced by memory, "
        'the planner asked for `device="cpu"`. *bench*: a step measured as `contsup bench` '
        "does on the CPU (bytes saved for backward + weights, gradients, momentum); "
        "*process*: the process's resident memory at its highest during the step, less what "
        "it held before, plus the weights, momentum and batch it already held. Budgets are a "
        "fraction of end-to-end's bench peak, or the planner's floor where that is higher, "
        "or (*least*) the least any K needs with its heads and bridges where the floor "
        "cannot be met.",
        "",
        "| setting | budget | MiB | K | predicted | process | bench | fits | K-1 process | "
        "K-1 bench | minimal | ckpt predicted | max batch | plan s (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    counts = {"planned": 0, "fits": 0, "minimal": 0, "minimal_bench": 0}
    for result in results:
        seen = set()
        for row in result["rows"]:
            fits, minimal = _verdicts(row, "process")
            minimal_bench = _verdicts(row, "bench")[1]
            if row["budget_bytes"] not in seen:  # budgets that met at the floor count once
                seen.add(row["budget_bytes"])
                counts["planned"] += 1
                counts["fits"] += fits
                counts["minimal"] += minimal
                counts["minimal_bench"] += minimal_bench
            fewer = row["fewer_measured"] or {}
            budget = f"{row['fraction']:.0%}" + (
                f" ({row['budget']})" if row["budget"] != "fraction" else ""
            )
            lines.append(
                f"| {result['name']} | {budget} | {row['budget_bytes'] / mib:.0f} | {row['k']} | "
                f"{row['predicted_bytes'] / mib:.0f} | {_cell(row['measured'], 'process')} | "
                f"{_cell(row['measured'], 'bench')} | {'yes' if fits else 'NO'} | "
                f"{_cell(fewer, 'process')} | {_cell(fewer, 'bench')} | "
                f"{'yes' if minimal else 'no'}{'' if minimal_bench else ' (bench: no)'} | "
                f"{row['checkpoint_predicted_bytes'] / mib:.0f} | {row['max_batch_size']} | "
                f"{row['plan_s']:.1f}{_cpu_cell(row)} |"
            )
    lines += [
        "",
        f"Planned {counts['planned']} distinct budgets (rows with the same budget are one "
        f"plan and one measurement). The process's measured peak fits the budget in "
        f"{counts['fits']}; the plan is minimal (K-1 measured over the budget) in "
        f"{counts['minimal']} by the process's peak, {counts['minimal_bench']} by bench's. "
        "MiB throughout; K-1 is cut by memory with its heads and bridges, as the planner "
        "cuts it. *plan s*: wall-clock seconds of the plan (two plans where a budget "
        "is *least*: the refused one and the one at the least), and in brackets the "
        "process's CPU seconds where recorded.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # must be set before the process starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="settings whose model name contains this")
    parser.add_argument("--report", action="store_true", help="rewrite the md only")
    args = parser.parse_args()
    path = RESULTS / "plan_cpu.json"
    saved = json.loads(path.read_text()) if path.exists() else {"results": []}
    if not args.report:
        for model, size, batch in SETTINGS:
            if args.only and args.only not in model:
                continue
            result = run_setting(model, size, batch)
            saved["results"] = [r for r in saved["results"] if r["name"] != result["name"]]
            saved["results"].append(result)
            saved["stamp"] = (
                f"{datetime.date.today()} on CPU ({platform.machine()}, "
                f"{torch.get_num_threads()} threads), torch {torch.__version__}, "
                f"timm {timm.__version__}"
            )
            path.write_text(json.dumps(saved, indent=1))
    (RESULTS / "plan_cpu.md").write_text(markdown(saved["results"], saved.get("stamp", "")))


if __name__ == "__main__":
    main()
