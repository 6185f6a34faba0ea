"""What the default aux design adds at 224 px, predicted on the meta device in seconds.

Per model and K, as ``contsup bench MODEL --k K --context R0,R1E --batch-size 32``
would report them, without running a step: the aux modules' parameters and
forward FLOPs as fractions of the backbone's (R0 and R1E), and the predicted
peak of a step (``contsup.bench.predict_local``; on the CPU bench's measured
peak matches it) of end-to-end, the floor, R0 and R1E. The floor is bench's (at
R0's cuts, the first context row) and again at R1E's own cuts, where the two
differ only by R1E's heads and bridges.

    OMP_NUM_THREADS=1 python benchmarks/aux_fractions.py
    OMP_NUM_THREADS=1 python benchmarks/aux_fractions.py --models efficientnet_b0 --ks 16
"""

from __future__ import annotations

import argparse

import timm
import torch

import partitioner
from contsup.auxiliary import DEFAULT_DESIGN
from contsup.bench import _local_runs, _predicted_static, predict_local
from contsup.budget import aux_budget

MODELS = (
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "resnet50",
    "convnext_tiny",
    "vit_small_patch16_224",
)
MIB = 2**20


def rows(name: str, ks: list[int], batch: int, classes: int, aux: str, head: str):
    """One dict per K: fractions and predicted peaks of ``name`` at 224 px."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=classes)
    x = torch.empty(batch, 3, 224, 224, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    analysis = partitioner.analyze(model, x)
    e2e = sum(c.saved_bytes for c in analysis.costs.values())
    e2e += _predicted_static(list(model.parameters()))
    options = dict(aux=aux, head=head, objective="memory")
    for k in ks:
        peaks, fractions = {}, {}
        for mode, run, meta in _local_runs(model, k, x, ["R0", "R1E"], **options):
            key = "floor" if mode == "floor" else run["context"]
            peaks[key] = predict_local(meta, x, y)
            if mode != "floor":
                budget = aux_budget(meta.aux_config, meta.geometries, meta.partition.stats, batch)
                fractions[key] = budget.fractions()
        own_floor = _local_runs(model, k, x, ["R1E"], **options)[0][2]
        peaks["floor at R1E's cuts"] = predict_local(own_floor, x, y)
        yield {"model": name, "k": k, "e2e": e2e, "peaks": peaks, "fractions": fractions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--ks", nargs="*", type=int, default=[4, 16])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10, help="as contsup bench's default")
    parser.add_argument("--aux", default=DEFAULT_DESIGN)
    parser.add_argument("--head", default="1c2f")
    args = parser.parse_args()
    print(
        "| model | K | aux params R0 / R1E | aux FLOPs R0 / R1E | peak MiB e2e / floor / R0 / R1E"
        " | R1E / e2e | R1E / floor | R1E / floor at R1E's cuts |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for row in rows(name, args.ks, args.batch_size, args.num_classes, args.aux, args.head):
            p, f, e2e = row["peaks"], row["fractions"], row["e2e"]
            own = p["floor at R1E's cuts"]
            print(
                f"| {name} | {row['k']} | {f['R0']['params']:.1%} / {f['R1E']['params']:.1%} "
                f"| {f['R0']['flops']:.1%} / {f['R1E']['flops']:.1%} "
                f"| {e2e / MIB:.0f} / {p['floor'] / MIB:.0f} / {p['R0'] / MIB:.0f} / "
                f"{p['R1E'] / MIB:.0f} | {p['R1E'] / e2e:.3f} | {p['R1E'] / p['floor']:.3f} "
                f"| {p['R1E'] / own:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
