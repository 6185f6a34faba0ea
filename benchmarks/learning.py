"""Does context supply help? Test accuracy of each mode on real data, on the CPU.

Suites (``--list`` prints the rows):

* ``fashion``: ResNet-32 on Fashion-MNIST (Debian's ``dataset-fashion-mnist``,
  1x28x28) at the paper's cuts: end-to-end (K=1), K=16 with R0, E, R1 and R1E,
  R1E with the paper's own modules (``aux paper``), and K=4 with R0 and R1E.
  Softmax local loss, 1c2f heads, a fixed subset and epoch budget (below).
* ``timm64``: timm's resnet18 on Fashion-MNIST upsampled to 64x64, K=8, R0
  against R1E at the same cuts (where R1E's memory balance puts them): the
  scaled design on an ImageNet-style network.

    apt-get install dataset-fashion-mnist      # once, as root
    python benchmarks/learning.py              # both suites, about 40 minutes on 2 cores
    python benchmarks/learning.py --report     # md + png from the saved json

Every row runs once per seed through ``contsup.trainer.train``; rows are merged
into benchmarks/results/learning_cpu.json as they finish, and the .md and .png
are rewritten from it. Per row: final test accuracy (mean and each seed), the
accuracy of each local head on its boundary (the paper's linear-separability
diagnostic), accuracy per epoch and wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from contsup.recipes import load_recipe
from contsup.trainer import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
RECIPES = Path(__file__).parent.parent / "recipes"


def paper_cuts(k: int) -> list[str]:
    """ResNet-32's cuts in the paper's tables (the T1 and T2 recipes)."""
    runs = dict(load_recipe(RECIPES / "t2_resnet32_cifar10.yaml").runs)
    return runs[f"K{k}-R1E-softmax"]["cuts"]


def rows() -> list[dict]:
    fashion = dict(
        suite="fashion",
        model="resnet32",
        dataset="fashion_mnist",
        train_images=6000,
        test_images=2000,
        epochs=4,
        batch_size=128,
        lr=0.1,
        seeds=[0, 1],
    )
    timm64 = dict(
        suite="timm64",
        model="resnet18",
        dataset="fashion_mnist:64",
        train_images=4000,
        test_images=2000,
        epochs=3,
        batch_size=64,
        lr=0.05,
        seeds=[0],
    )
    return [
        dict(fashion, name="E2E", k=1, context="R0", aux="scaled", cuts=None),
        *(
            dict(fashion, name=f"K16 {c}", k=16, context=c, aux="scaled", cuts=paper_cuts(16))
            for c in ("R0", "E", "R1", "R1E")
        ),
        dict(fashion, name="K16 R1E paper", k=16, context="R1E", aux="paper", cuts=paper_cuts(16)),
        *(
            dict(fashion, name=f"K4 {c}", k=4, context=c, aux="scaled", cuts=paper_cuts(4))
            for c in ("R0", "R1E")
        ),
        *(
            dict(timm64, name=f"resnet18@64 K8 {c}", k=8, context=c, aux="scaled", cuts=None)
            for c in ("R0", "R1E")
        ),
    ]


def balanced_cuts(row: dict) -> list[str]:
    """Where R1E's memory balance cuts ``row``'s model; every row of its suite uses them.

    Balancing counts the aux modules, so R0 alone would cut elsewhere, and a
    comparison across cut sets measures the cuts more than the context.
    """
    import timm

    from contsup.data import parse_dataset
    from contsup.learner import wrap

    info, _ = parse_dataset(row["dataset"])
    with torch.device("meta"):
        model = timm.create_model(row["model"], num_classes=10, in_chans=info.image_size[0])
    x = torch.empty(row["batch_size"], *info.image_size, device="meta")
    learner = wrap(model, row["k"], context="R1E", objective="memory", example_input=x)
    return [b.node for b in learner.partition.boundaries]


def run_row(row: dict, seed: int, work: Path) -> dict:
    config = TrainConfig(
        model=row["model"],
        k=row["k"],
        cuts=row["cuts"],
        context=row["context"],
        aux=row["aux"],
        head="1c2f",
        local_loss="ce",
        objective="memory",
        dataset=row["dataset"],
        train_images=row["train_images"],
        test_images=row["test_images"],
        epochs=row["epochs"],
        batch_size=row["batch_size"],
        lr=row["lr"],
        warmup_epochs=0,
        device="cpu",
        seed=seed,
        out=str(work / f"{row['name'].replace(' ', '_')}-{seed}"),
    )
    started = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - started
    lines = Path(config.out, "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    return {
        "seed": seed,
        "seconds": seconds,
        "test_accuracy": metrics[-1]["test_accuracy"],
        "curve": [m["test_accuracy"] for m in metrics],
        "head_accuracies": metrics[-1]["head_accuracies"],
    }


def markdown(results: list[dict], stamp: str) -> str:
    lines = [
        f"Measured {stamp}.",
        "",
        "| suite | row | K | context | aux | test accuracy (mean) | per seed | time / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        accuracies = [s["test_accuracy"] for s in r["seeds"]]
        seconds = statistics.mean(s["seconds"] for s in r["seeds"])
        lines.append(
            f"| {r['suite']} | {r['name']} | {r['k']} | {r['context']} | {r['aux']} | "
            f"{statistics.mean(accuracies):.2%} | "
            f"{', '.join(f'{a:.2%}' for a in accuracies)} | {seconds:.0f} s |"
        )
    lines += ["", "Local heads' test accuracy by boundary (mean over seeds), K=16:", ""]
    for r in results:
        if r["k"] != 16:
            continue
        heads = [statistics.mean(h) for h in zip(*(s["head_accuracies"] for s in r["seeds"]))]
        lines.append(f"- {r['name']}: " + " ".join(f"{a:.2f}" for a in heads))
    lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, depth) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        if r["suite"] != "fashion":
            continue
        curve = [statistics.mean(c) for c in zip(*(s["curve"] for s in r["seeds"]))]
        curves.plot(range(1, len(curve) + 1), curve, marker="o", label=r["name"])
        if r["k"] == 16:
            heads = [statistics.mean(h) for h in zip(*(s["head_accuracies"] for s in r["seeds"]))]
            depth.plot(range(1, len(heads) + 1), heads, marker=".", label=r["name"])
    curves.set(xlabel="epoch", ylabel="test accuracy", title="ResNet-32, Fashion-MNIST")
    depth.set(xlabel="boundary (segment whose output the head reads)", ylabel="head accuracy",
              title="local heads at K=16: separability by depth")  # fmt: skip
    for axis in (curves, depth):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(stamp, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the row names")
    parser.add_argument("--report", action="store_true", help="only rewrite the .md and .png")
    args = parser.parse_args()
    if args.list:
        print("\n".join(r["name"] for r in rows()))
        return
    path = RESULTS / "learning_cpu.json"
    saved = json.loads(path.read_text()) if path.exists() else {"rows": []}
    by_name = {r["name"]: r for r in saved["rows"]}
    with tempfile.TemporaryDirectory() as work:
        for row in [] if args.report else rows():
            if args.only and row["name"] not in args.only:
                continue
            if row["cuts"] is None and row["k"] > 1:
                row = {**row, "cuts": balanced_cuts(row)}
            seeds = [run_row(row, seed, Path(work)) for seed in row["seeds"]]
            by_name[row["name"]] = {
                **row,
                "seeds": seeds,
                "measured": f"{datetime.date.today()}, torch {torch.__version__}, "
                f"{torch.get_num_threads()} CPU threads",
            }
            print(row["name"], [round(s["test_accuracy"], 4) for s in seeds], flush=True)
            RESULTS.mkdir(exist_ok=True)
            path.write_text(json.dumps({"rows": list(by_name.values())}, indent=2))
    order = [r["name"] for r in rows()]
    results = sorted(by_name.values(), key=lambda r: order.index(r["name"]))
    stamp = "; ".join(sorted({r["measured"] for r in results}))
    (RESULTS / "learning_cpu.md").write_text(markdown(results, stamp))
    plot(results, RESULTS / "learning_cpu.png", stamp)
    print(markdown(results, stamp))


if __name__ == "__main__":
    main()
