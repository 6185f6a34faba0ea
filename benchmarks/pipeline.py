"""Does pipelining pay? Images/s at P=1 and P=2, idle time per stage, peak memory.

One run measures, alternately and ``--rounds`` times each, one process with one
thread (P=1) and ``torchrun`` with P processes of one thread each (P=2 on this
2-core machine), on the same learner, batches and steps. Every rank replays the
same pre-made batches, so the figures are training throughput, not data loading.
Reported per setting: the median images/s and its ratio to P=1, and per stage:
its units, its share of the partition's cost, the seconds it computed, the
seconds it waited on a neighbour (the bubble, seen from that stage), and its
peak activation bytes (saved for backward) against one process's.

    python benchmarks/pipeline.py                 # writes benchmarks/results/pipeline_cpu.*
    python benchmarks/pipeline.py --device cuda   # one GPU: the P=1 path only
    python benchmarks/pipeline.py --report        # redraw the .md and .png from the .json

Results go to ``results/pipeline_<device>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    # (model, K, context, batch): CIFAR-sized, where one CPU core is the bottleneck.
    ("resnet32", 4, "R1E", 128),
    ("resnet32", 16, "R1E", 128),  # the paper's Table 1 and 3 settings
    ("resnet110", 16, "R1E", 128),
]
# (name, P, what the stages balance)
VARIANTS = [("P1", 1, "cost"), ("P2 cost", 2, "cost"), ("P2 time", 2, "time")]
GOAL = 1.7  # P=2 images/s over P=1, on 2 cores


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): time ``--steps`` steps after ``--warmup``."""
    import timm

    import contsup  # noqa: F401  (registers the CIFAR ResNets)
    from contsup.distributed import init_mesh, pipeline
    from contsup.learner import wrap
    from contsup.memory import SavedTensorTracker

    torch.set_num_threads(1)
    device = torch.device(args.device)
    mesh = init_mesh(args.pipeline, args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    example = torch.zeros(2, 3, 32, 32)
    learner = wrap(model, args.k, context=args.context, example_input=example)
    pipe = pipeline(learner, mesh, device, balance=args.balance, batch_size=args.batch)
    optimizer = torch.optim.SGD(pipe.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(args.batch, 3, 32, 32, generator=g).to(device),
            torch.randint(0, 10, (args.batch,), generator=g).to(device),
        )
        for _ in range(4)
    ]

    done: list[float] = []  # when each timed step finished on this rank

    def run(steps: int) -> None:
        for i in range(steps):
            x, y = batches[i % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            pipe.local_backward(x, y)
            optimizer.step()
            done.append(time.perf_counter())
        pipe.flush()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if mesh is not None:
            torch.distributed.barrier()

    run(args.warmup)
    done.clear()
    pipe.waiting = pipe.computing = 0.0
    started = time.perf_counter()
    with SavedTensorTracker(pipe.parameters()) as tracker:
        run(args.steps)
    seconds = time.perf_counter() - started
    cost = sum(pipe.costs[j] for j in pipe.units) / sum(pipe.costs)
    row = {
        "stage": pipe.stage,
        "units": [pipe.units.start, pipe.units.stop],
        "cost_share": cost,
        "seconds": seconds,
        "images_per_s": args.steps * args.batch / seconds,
        # Between the first and the last step this rank finished: no fill, no drain.
        "steady_images_per_s": (args.steps - 1) * args.batch / (done[-1] - done[0]),
        "computing_s": pipe.computing,
        "waiting_s": pipe.waiting,
        "peak_activation_bytes": tracker.peak_bytes,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    rank = int(os.environ.get("RANK", 0))
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(row))
    if mesh is not None:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(setting: tuple, stages: int, balance: str, args: argparse.Namespace) -> list[dict]:
    """Start the worker(s) for one setting at ``stages`` stages; their rows, by stage."""
    model, k, context, batch = setting
    with tempfile.TemporaryDirectory() as out:
        worker_args = [
            str(Path(__file__).resolve()),
            "--worker",
            f"--model={model}",
            f"--k={k}",
            f"--context={context}",
            f"--batch={batch}",
            f"--steps={args.steps}",
            f"--warmup={args.warmup}",
            f"--device={args.device}",
            f"--pipeline={stages}",
            f"--balance={balance}",
            f"--out={out}",
        ]
        launcher = [sys.executable]
        if stages > 1:
            launcher += [
                "-m",
                "torch.distributed.run",
                f"--nproc-per-node={stages}",
                "--master-addr=127.0.0.1",
                f"--master-port={free_port()}",
            ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        subprocess.run([*launcher, *worker_args], env=env, check=True, timeout=1800)
        rows = [json.loads(p.read_text()) for p in Path(out).glob("rank*.json")]
    return sorted(rows, key=lambda r: r["stage"])


def summarize(runs: list[list[dict]]) -> dict:
    """The median round of one setting and P, by the last stage's steady images/s
    (what an epoch of hundreds of steps sees; the pipe fills and drains once per epoch)."""
    rates = [rows[-1]["steady_images_per_s"] for rows in runs]
    median = statistics.median_low(rates)
    stages = runs[rates.index(median)]
    return {
        "steady_images_per_s": median,
        "images_per_s": min(r["images_per_s"] for r in stages),
        "rounds": rates,
        "stages": stages,
    }


def write_results(result: dict, device: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"pipeline_{device}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Measured {result['date']} on {result['machine']}, torch {result['torch']}: "
        f"`{result['command']}`. One thread per process; "
        f"{result['steps']} timed steps after {result['warmup']} warm-up steps, "
        f"median of {result['rounds']} alternating rounds. Steady: between the first and the "
        "last step the last stage finished, as in an epoch of hundreds of steps (the pipe "
        "fills and drains once per epoch); with fill and drain: over the timed steps.",
        "",
        "| setting | run | steady images/s | x P=1 | with fill and drain | x P=1 | stage | units "
        "| cost share | computing s | waiting s | peak activations (MiB) | x P=1 peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in result["settings"]:
        base = setting["P1"]
        base_peak = base["stages"][0]["peak_activation_bytes"]
        for key, _, _ in VARIANTS:
            if key not in setting:
                continue
            entry = setting[key]
            steady, rate = entry["steady_images_per_s"], entry["images_per_s"]
            for stage in entry["stages"]:
                first = stage["stage"] == 0
                lead = (
                    [
                        setting["name"] if key == "P1" else "",
                        key,
                        f"{steady:.0f}",
                        f"{steady / base['steady_images_per_s']:.2f}",
                        f"{rate:.0f}",
                        f"{rate / base['images_per_s']:.2f}",
                    ]
                    if first
                    else [""] * 6
                )
                cells = [
                    *lead,
                    str(stage["stage"]),
                    f"{stage['units'][0]}-{stage['units'][1] - 1}",
                    f"{stage['cost_share']:.2f}",
                    f"{stage['computing_s']:.2f}",
                    f"{stage['waiting_s']:.2f}",
                    f"{stage['peak_activation_bytes'] / 2**20:.1f}",
                    f"{stage['peak_activation_bytes'] / base_peak:.2f}",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Goal: P=2 at least {GOAL}x P=1 on this 2-core machine."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(result, stem.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in result["settings"] if "P2 time" in s]
    if not settings:
        return
    fig, (speed, stages) = plt.subplots(1, 2, figsize=(13, 4))
    names = [s["name"] for s in settings]
    width = 0.38
    for i, key in enumerate(("P2 cost", "P2 time")):
        ratios = [s[key]["steady_images_per_s"] / s["P1"]["steady_images_per_s"] for s in settings]
        positions = [n + (i - 0.5) * width for n in range(len(settings))]
        speed.bar(positions, ratios, width, label=f"{key[3:]}-balanced stages")
    speed.set_xticks(range(len(settings)), names, fontsize=8)
    speed.axhline(GOAL, color="black", linestyle="--", linewidth=1, label=f"goal {GOAL}x")
    speed.axhline(2.0, color="grey", linestyle=":", linewidth=1, label="ideal 2x")
    speed.set_ylabel("P=2 steady images/s / P=1")
    speed.legend(loc="lower right", fontsize=8)
    labels, computing, waiting = [], [], []
    for s in settings:
        for key in ("P2 cost", "P2 time"):
            for stage in s[key]["stages"]:
                labels.append(f"{' '.join(s['name'].split()[:2])} {key[3:]} s{stage['stage']}")
                computing.append(stage["computing_s"])
                waiting.append(stage["waiting_s"])
    stages.bar(labels, computing, label="computing")
    stages.bar(labels, waiting, bottom=computing, label="waiting on a neighbour")
    stages.tick_params(axis="x", labelsize=7, labelrotation=60)
    stages.set_ylabel("seconds over the timed steps")
    stages.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Pipelined local learning, P=2 vs one process ({result['machine']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--report", action="store_true", help="rewrite the .md and .png from the .json only"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("model", "context", "out", "balance"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("k", "batch", "pipeline"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.report:
        path = RESULTS / f"pipeline_{args.device}.json"
        write_results(json.loads(path.read_text()), args.device)
        return
    # One GPU here: the P=1 path only; never a multi-GPU figure.
    variants = VARIANTS if args.device == "cpu" else VARIANTS[:1]
    settings = []
    for setting in SETTINGS:
        runs: dict[str, list] = {key: [] for key, _, _ in variants}
        for _ in range(args.rounds):  # alternate, so drift hits every variant alike
            for key, stages, balance in variants:
                runs[key].append(measure(setting, stages, balance, args))
        model, k, context, batch = setting
        entry = {"name": f"{model} K={k} {context} b{batch}"}
        entry.update({key: summarize(runs[key]) for key, _, _ in variants})
        settings.append(entry)
        for key, _, _ in variants:
            rate = entry[key]["steady_images_per_s"]
            ratio = rate / entry["P1"]["steady_images_per_s"]
            print(f"{entry['name']}  {key}: {rate:.0f} img/s steady ({ratio:.2f}x)")
    result = {
        "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores"
        if args.device == "cpu"
        else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "settings": settings,
    }
    write_results(result, args.device)


if __name__ == "__main__":
    main()
