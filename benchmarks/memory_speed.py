"""Memory and speed of local learning against end-to-end training and checkpointing.

Reproduces InfoPro's settings (ResNet-110 on 32x32 images at batch 1024, and on
96x96 images at batch 128) and a timm set (resnet50, vit_small_patch16_224,
convnext_tiny at 224). For each: end-to-end, gradient checkpointing at the same
cuts, and local learning for each K and context, all in one process.

    python benchmarks/memory_speed.py --device cuda
    python benchmarks/memory_speed.py --device cpu --timm-batch 8 --ks 4 16 \
        --contexts R1 R1E --steps 2          # what fits a CPU

Writes benchmarks/results/memory_speed_<device>.{json,md,png}, stamped with the
device name, torch version and date.
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

import contsup  # noqa: F401  (registers resnet110)
from contsup.bench import run_bench

RESULTS = Path(__file__).parent / "results"


def settings(timm_batch: int) -> list[dict]:
    infopro = dict(model="resnet110", ks=[2, 4, 8, 16], contexts=["R0", "R1", "R1E"])
    return [
        dict(infopro, name="resnet110-32px-b1024", input_size=(3, 32, 32), batch_size=1024),
        dict(infopro, name="resnet110-96px-b128", input_size=(3, 96, 96), batch_size=128),
        *(
            dict(
                model=m,
                name=f"{m}-224-b{timm_batch}",
                ks=[4],
                contexts=["R0", "R1E"],
                input_size=(3, 224, 224),
                batch_size=timm_batch,
            )
            for m in ("resnet50", "vit_small_patch16_224", "convnext_tiny")
        ),
    ]


def markdown(results: list[dict], stamp: str) -> str:
    lines = [f"Measured {stamp}.", ""]
    for result in results:
        rows = result["rows"]
        e2e = rows[0]
        lines += [
            f"### {result['name']}",
            "",
            "| mode | K | context | peak MiB | peak / e2e | predicted / measured | "
            "ms/step | time / e2e | images/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cells = [
                r["mode"],
                r["k"],
                r["context"] or "-",
                f"{r['peak_bytes'] / 2**20:.0f}",
                f"{r['peak_bytes'] / e2e['peak_bytes']:.3f}",
                f"{r['predicted_peak_bytes'] / r['peak_bytes']:.3f}",
                f"{r['step_time_s'] * 1e3:.0f}",
                f"{r['step_time_s'] / e2e['step_time_s']:.2f}",
                f"{r['images_per_s']:.0f}",
            ]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for axis, result in zip(axes[0], results):
        e2e = result["rows"][0]
        for r in result["rows"]:
            x = r["step_time_s"] / e2e["step_time_s"]
            y = r["peak_bytes"] / e2e["peak_bytes"]
            marker = {"e2e": "s", "checkpoint": "^"}.get(r["mode"], "o")
            axis.scatter(
                x,
                y,
                marker=marker,
                color={"e2e": "black", "checkpoint": "#c44e52"}.get(r["mode"], "#4878a8"),
            )
            label = (
                r["mode"]
                if r["mode"] == "e2e"
                else f"{'ckpt ' if r['mode'] == 'checkpoint' else ''}K{r['k']} {r['context'] or ''}"
            )
            axis.annotate(
                label.strip(), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        axis.set_title(result["name"], fontsize=9)
        axis.set_xlabel("step time / end-to-end")
        axis.set_ylabel("peak memory / end-to-end")
        axis.grid(alpha=0.3)
    fig.suptitle(stamp, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--timm-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--objective", default="memory", help="what the cuts balance")
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    parser.add_argument("--ks", type=int, nargs="*", help="override every setting's K values")
    parser.add_argument("--contexts", nargs="*", help="override every setting's context modes")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    stamp = (
        f"{datetime.date.today()} on {name}, torch {torch.__version__}, timm {timm.__version__}, "
        f"cuts balanced by {args.objective}"
    )
    results = []
    for setting in settings(args.timm_batch):
        if args.only and setting["name"] not in args.only:
            continue
        print(f"== {setting['name']}", flush=True)

        def make_model(model=setting["model"]):
            return timm.create_model(model, num_classes=10)

        rows = run_bench(
            make_model,
            ks=args.ks or setting["ks"],
            contexts=args.contexts or setting["contexts"],
            batch_size=setting["batch_size"],
            input_size=setting["input_size"],
            num_classes=10,
            device=device,
            steps=args.steps,
            objective=args.objective,
            on_row=lambda r: print(json.dumps(asdict(r)), flush=True),
        )
        results.append({"name": setting["name"], "rows": [asdict(r) for r in rows]})
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"memory_speed_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps({"stamp": stamp, "results": results}, indent=2))
    stem.with_suffix(".md").write_text(markdown(results, stamp))
    plot(results, stem.with_suffix(".png"), stamp)
    print(markdown(results, stamp))


if __name__ == "__main__":
    main()
