"""How fast is the analysis, and how balanced are its cuts?

Prints, for each model: analysis time, imbalance (max/mean forward FLOPs) and the
largest segment's GFLOPs for contsup's exact min-max partition and two baselines
computed on the same cut candidates and costs: equal layer counts and
parameter-balanced splits (DeepSpeed's ``uniform`` and ``parameters`` methods).
Each optimum is certified: no split into K groups has a smaller maximum, because
the greedy probe at (optimum - 1) FLOPs needs more than K groups.

It also times ``contsup split resnet110 --k 16`` against
``python -c "import torch, timm"`` in the same run (median of 5, interleaved).

    python benchmarks/split.py            # writes benchmarks/results/split.{json,md}
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch

import contsup  # noqa: F401
import partitioner
from partitioner.balance import group_sums, min_max_partition, uniform_partition

CASES = [("resnet110", 16), ("resnet50", 4), ("vit_base_patch16_224", 12), ("convnext_tiny", 4)]
RESULTS = Path(__file__).parent / "results"


def greedy_groups(costs: list[int], limit: int) -> int:
    """Fewest contiguous groups with every sum <= limit (inf if a chunk exceeds it)."""
    groups, current = 1, 0
    for c in costs:
        if c > limit:
            return sys.maxsize
        if current + c > limit:
            groups, current = groups + 1, 0
        current += c
    return groups


def analyse(name: str, k: int) -> dict:
    with torch.device("meta"):
        model = timm.create_model(name)
    x = torch.empty(1, *model.pretrained_cfg["input_size"], device="meta")
    start = time.perf_counter()
    analysis = partitioner.analyze(model, x)
    part = analysis.partition(k)
    seconds = time.perf_counter() - start
    flops = analysis.chunk_costs("flops")
    params = analysis.chunk_costs("params")
    mean = sum(flops) / k
    best = max(group_sums(flops, min_max_partition(flops, k)))
    assert best == max(s.flops for s in part.stats)
    certified = greedy_groups(flops, best - 1) > k
    row = {
        "model": name,
        "k": k,
        "cut_candidates": len(analysis.cuts),
        "analysis_s": seconds,
        "certified_optimal": certified,
    }
    for method, splits in (
        ("contsup", min_max_partition(flops, k)),
        ("uniform", uniform_partition(len(flops), k)),
        ("parameters", min_max_partition(params, k)),
    ):
        largest = max(group_sums(flops, splits))
        row[method] = {"imbalance": largest / mean, "largest_gflops": largest / 1e9}
    return row


def median_wall(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def cli_timing(runs: int = 5) -> dict:
    imports, splits = [], []
    contsup_cli = [sys.executable, "-m", "contsup.cli", "split", "resnet110", "--k", "16", "--json"]
    for _ in range(runs):  # interleaved, so both see the same machine load
        imports += median_wall([sys.executable, "-c", "import torch, timm"], 1)
        splits += median_wall(contsup_cli, 1)
    imp, spl = statistics.median(imports), statistics.median(splits)
    return {"import_torch_timm_s": imp, "contsup_split_s": spl, "ratio": spl / imp}


def markdown(rows: list[dict], cli: dict, stamp: str) -> str:
    lines = [
        f"Measured {stamp}.",
        "",
        "| model | K | candidates | analysis s | contsup imbalance | largest GFLOPs | "
        "uniform imbalance | largest GFLOPs | parameters imbalance | largest GFLOPs | optimal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["model"], r["k"], r["cut_candidates"], f"{r['analysis_s']:.2f}"]
        for method in ("contsup", "uniform", "parameters"):
            cells += [f"{r[method]['imbalance']:.3f}", f"{r[method]['largest_gflops']:.3f}"]
        cells.append("yes" if r["certified_optimal"] else "no")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += [
        "",
        f"`contsup split resnet110 --k 16`: {cli['contsup_split_s']:.2f} s, against "
        f'{cli["import_torch_timm_s"]:.2f} s for `python -c "import torch, timm"` '
        f"(ratio {cli['ratio']:.2f}; goal <= 1.5).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    stamp = (
        f"{datetime.date.today()} on {platform.processor() or platform.machine()} CPU, "
        f"torch {torch.__version__}, timm {timm.__version__}"
    )
    rows = []
    for name, k in CASES:
        rows.append(analyse(name, k))
        print(json.dumps(rows[-1]), flush=True)
    cli = cli_timing()
    print(json.dumps(cli), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "split.json").write_text(
        json.dumps({"stamp": stamp, "rows": rows, "cli": cli}, indent=2)
    )
    (RESULTS / "split.md").write_text(markdown(rows, cli, stamp))
    print(markdown(rows, cli, stamp))


if __name__ == "__main__":
    main()
