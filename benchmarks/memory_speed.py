"""Memory and speed of local learning against end-to-end training and checkpointing.

Settings (``--list`` prints them):

* ``timm``: nine timm families at 224 px, batch 32, cuts balanced by memory,
  K=4 and a deep K (16 for CNNs; as many as the blocks allow for token models),
  R1 and R1E with the default aux design. Each model is one
  ``contsup bench`` run: e2e, checkpointing, the floor (R0 with a GAP+Linear
  head at the same cuts) and the context rows.
* ``cifar``: the paper's scale: resnet32 K=16 at batch 128 and resnet110 K=16 at
  batch 1024, 32 px.

    python benchmarks/memory_speed.py --device cpu --steps 2        # everything
    python benchmarks/memory_speed.py --only resnet50-224-b32       # one setting
    python benchmarks/memory_speed.py --report                      # md + png only

Each setting's rows are merged into benchmarks/results/memory_speed_<device>.json
as soon as it ends (so settings can be run one at a time); the .md (with a goals
table, issue 9's targets) and .png are rewritten from that file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from dataclasses import asdict
from pathlib import Path

import timm
import torch

import contsup  # noqa: F401  (registers the CIFAR ResNets)
from contsup.bench import run_bench
from contsup.cpu_allocator import keep_freed_memory

RESULTS = Path(__file__).parent / "results"

# model -> the deep K: 16 for CNNs, the largest K the blocks allow for token models.
TIMM_224 = {
    "resnet50": 16,
    "vit_small_patch16_224": 12,
    "convnext_tiny": 16,
    "efficientnet_b0": 16,
    "mobilenetv3_large_100": 16,
    "regnety_008": 12,
    "densenet121": 16,
    "swin_tiny_patch4_window7_224": 12,
    "poolformer_s12": 12,
}

# The goals of issue 9, as (description, test on a model's summary). At 32 px only
# the time goals and staying below checkpointing apply.
GOALS_32PX = ("R1E below checkpointing where the floor is", "R1 time <= 1.2x", "R1E time <= 1.3x")
GOALS = {
    "K=4 R1E <= 0.45x e2e": lambda s: s["k4_r1e"] is None or s["k4_r1e"] <= 0.45,
    "deep R1E <= 0.30x e2e": lambda s: s["deep_r1e"] <= 0.30,
    "R1E <= 1.15x floor": lambda s: s["worst_over_floor"] <= 1.15,
    "R1E below checkpointing where the floor is": lambda s: s["below_checkpoint"],
    "R1 time <= 1.2x": lambda s: s["r1_time"] <= 1.2,
    "R1E time <= 1.3x": lambda s: s["r1e_time"] <= 1.3,
    "aux params <= 10%": lambda s: s["aux_params"] <= 0.10,
    "aux FLOPs <= 10%": lambda s: s["aux_flops"] <= 0.10,
}


def settings() -> list[dict]:
    timm_set = [
        dict(
            name=f"{model}-224-b32",
            model=model,
            ks=[4, deep],
            contexts=["R1", "R1E"],
            input_size=(3, 224, 224),
            batch_size=32,
        )
        for model, deep in TIMM_224.items()
    ]
    cifar = [
        dict(name=f"{model}-32px-b{batch}", model=model, ks=[16], contexts=["R1", "R1E"],
             input_size=(3, 32, 32), batch_size=batch)
        for model, batch in (("resnet32", 128), ("resnet110", 1024))
    ]  # fmt: skip
    return timm_set + cifar


def summarize(rows: list[dict]) -> dict:
    """The goal quantities of one setting: ratios to e2e, the floor and checkpointing."""
    e2e = next(r for r in rows if r["mode"] == "e2e")
    ks = sorted({r["k"] for r in rows if r["mode"] == "local"})

    def row(mode, k, context=None):
        return next(
            r
            for r in rows
            if r["mode"] == mode and r["k"] == k and (context in (None, r["context"]))
        )

    def ratio(r, base, key="peak_bytes"):
        return r[key] / base[key]

    locals_ = [r for r in rows if r["mode"] == "local"]
    below = all(
        ratio(row("local", k, "R1E"), row("checkpoint", k)) < 1
        for k in ks
        if ratio(row("floor", k), row("checkpoint", k)) < 1
    )
    return {
        "k4_r1e": ratio(row("local", 4, "R1E"), e2e) if 4 in ks else None,
        "deep_k": ks[-1],
        "deep_r1e": ratio(row("local", ks[-1], "R1E"), e2e),
        "deep_floor": ratio(row("floor", ks[-1]), e2e),
        "deep_checkpoint": ratio(row("checkpoint", ks[-1]), e2e),
        "worst_over_floor": max(ratio(r, row("floor", r["k"])) for r in locals_),
        "below_checkpoint": below,
        "r1_time": max(ratio(r, e2e, "step_time_s") for r in locals_ if r["context"] == "R1"),
        "r1e_time": max(ratio(r, e2e, "step_time_s") for r in locals_ if r["context"] == "R1E"),
        "aux_params": max(r["aux_params_fraction"] for r in locals_),
        "aux_flops": max(r["aux_flops_fraction"] for r in locals_),
    }


def markdown(results: list[dict], stamp: str) -> str:
    lines = [f"Measured {stamp}.", "", "### Goals", ""]
    lines += [
        "| setting | K=4 R1E / e2e | deep K | deep R1E / e2e | deep floor / e2e | "
        "deep ckpt / e2e | worst R1x / floor | R1 time | R1E time | aux params | "
        "aux FLOPs | goals missed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        s = summarize(result["rows"])
        missed = [name for name, met in GOALS.items() if not met(s)]
        if "-32px-" in result["name"]:
            missed = [m for m in missed if m in GOALS_32PX]
        lines.append(
            f"| {result['name']} | {'-' if s['k4_r1e'] is None else format(s['k4_r1e'], '.3f')} | "
            f"{s['deep_k']} | {s['deep_r1e']:.3f} | "
            f"{s['deep_floor']:.3f} | {s['deep_checkpoint']:.3f} | {s['worst_over_floor']:.3f} | "
            f"{s['r1_time']:.2f}x | {s['r1e_time']:.2f}x | {s['aux_params']:.1%} | "
            f"{s['aux_flops']:.1%} | {'; '.join(missed) or 'none'} |"
        )
    lines.append("")
    for result in results:
        rows = result["rows"]
        e2e = rows[0]
        floors = {r["k"]: r for r in rows if r["mode"] == "floor"}
        lines += [
            f"### {result['name']}",
            "",
            "| mode | K | context | head | peak MiB | peak / e2e | peak / floor | "
            "predicted / measured | ms/step | time / e2e | aux params | aux FLOPs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            floor = floors.get(r["k"]) if r["mode"] in ("floor", "local") else None
            aux = r.get("aux_params_fraction")
            cells = [
                r["mode"],
                r["k"],
                r["context"] or "-",
                r.get("head") or "-",
                f"{r['peak_bytes'] / 2**20:.0f}",
                f"{r['peak_bytes'] / e2e['peak_bytes']:.3f}",
                f"{r['peak_bytes'] / floor['peak_bytes']:.3f}" if floor else "-",
                f"{r['predicted_peak_bytes'] / r['peak_bytes']:.3f}",
                f"{r['step_time_s'] * 1e3:.0f}",
                f"{r['step_time_s'] / e2e['step_time_s']:.2f}",
                "-" if aux is None else f"{aux:.1%}",
                "-" if aux is None else f"{r['aux_flops_fraction']:.1%}",
            ]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows_ = -(-len(results) // columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(4.2 * columns, 3.8 * rows_), squeeze=False)
    colors = {"e2e": "black", "checkpoint": "#c44e52", "floor": "#999999", "local": "#4878a8"}
    for axis, result in zip(axes.flat, results):
        e2e = result["rows"][0]
        for r in result["rows"]:
            x = r["step_time_s"] / e2e["step_time_s"]
            y = r["peak_bytes"] / e2e["peak_bytes"]
            marker = {"e2e": "s", "checkpoint": "^", "floor": "v"}.get(r["mode"], "o")
            axis.scatter(x, y, marker=marker, color=colors[r["mode"]])
            label = {
                "e2e": "e2e",
                "checkpoint": f"ckpt K{r['k']}",
                "floor": f"floor K{r['k']}",
            }.get(r["mode"], f"K{r['k']} {r['context']}")
            axis.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_title(result["name"], fontsize=9)
        axis.set_xlabel("step time / end-to-end")
        axis.set_ylabel("peak memory / end-to-end")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(results) :]:
        axis.axis("off")
    fig.suptitle(stamp, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the setting names")
    parser.add_argument("--report", action="store_true", help="only rewrite the .md and .png")
    args = parser.parse_args()
    keep_freed_memory()  # the CLI's allocator setting (contsup.cpu_allocator)
    if args.list:
        print("\n".join(s["name"] for s in settings()))
        return
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    stem = RESULTS / f"memory_speed_{device.type}"
    path = stem.with_suffix(".json")

    def saved() -> dict[str, dict]:
        # Read afresh each time: another run (--only) may have added settings meanwhile.
        results = json.loads(path.read_text())["results"] if path.exists() else []
        return {r["name"]: r for r in results}

    mine: dict[str, dict] = {}
    for setting in [] if args.report else settings():
        if args.only and setting["name"] not in args.only:
            continue
        print(f"== {setting['name']}", flush=True)

        def make_model(model=setting["model"]):
            return timm.create_model(model, num_classes=10)

        rows = run_bench(
            make_model,
            ks=setting["ks"],
            contexts=setting["contexts"],
            batch_size=setting["batch_size"],
            input_size=setting["input_size"],
            num_classes=10,
            device=device,
            steps=args.steps,
            objective="memory",
            on_row=lambda r: print(json.dumps(asdict(r)), flush=True),
        )
        mine[setting["name"]] = {
            "name": setting["name"],
            "measured": f"{datetime.date.today()} on {name}, torch {torch.__version__}, "
            f"timm {timm.__version__}, steps {args.steps}",
            "rows": [asdict(r) for r in rows],
        }
        RESULTS.mkdir(exist_ok=True)
        merged = {**saved(), **mine}
        path.write_text(json.dumps({"results": list(merged.values())}, indent=2))
    order = [s["name"] for s in settings()]
    results = sorted(saved().values(), key=lambda r: order.index(r["name"]))
    stamps = sorted({r.get("measured", "") for r in results})
    designs = sorted({row["aux"] for r in results for row in r["rows"] if row.get("aux")})
    stamp = "; ".join(stamps) + f"; cuts balanced by memory, aux design {' or '.join(designs)}"
    stem.with_suffix(".md").write_text(markdown(results, stamp))
    plot(results, stem.with_suffix(".png"), stamp)
    print(markdown(results, stamp))


if __name__ == "__main__":
    main()
