"""What each aux design costs at 224 px: resnet50, K=16, R1E, batch 32, on the CPU.

The ablation of benchmarks/learning.py says what each part of the context
modules buys in accuracy; this says what it costs where local learning is
meant to save memory. Per design: the measured peak (saved-for-backward bytes
plus static bytes, as ``contsup bench`` reports on the CPU) and the step time,
both as ratios to end-to-end's measured in the same run, and the aux modules'
parameters and forward FLOPs as fractions of the backbone's.

    python benchmarks/context_cost.py                 # all designs, about 15 min on 2 cores
    python benchmarks/context_cost.py --designs scaled paper
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import timm
import torch

from contsup.bench import _e2e_step, _local_step, _sgd, measure
from contsup.budget import aux_budget
from contsup.cpu_allocator import keep_freed_memory
from contsup.learner import wrap

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    from learning import register_variants

    register_variants()
    from contsup.auxiliary import aux_designs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", nargs="*", default=aux_designs())
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    keep_freed_memory()  # the CLI's allocator setting (contsup.cpu_allocator)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 224, 224)
    y = torch.randint(0, 10, (args.batch_size,))

    def make():
        return timm.create_model(args.model, num_classes=10)

    model = make()
    optimizer = _sgd(model.parameters())
    step = partial(_e2e_step, model, optimizer, x, y)
    e2e_peak, _, _, e2e_time = measure(
        step, list(model.parameters()), optimizer, x.device, steps=args.steps
    )
    del model, optimizer, step
    meta_x = torch.empty(x.shape, device="meta")
    with torch.device("meta"):
        cuts = wrap(make(), args.k, context="R1E", objective="memory", example_input=meta_x)
    rows = []
    for design in args.designs:
        learner = wrap(make(), context="R1E", aux=design, cuts=cuts.partition, example_input=x)
        optimizer = _sgd(learner.parameters())
        step = partial(_local_step, learner, optimizer, x, y)
        peak, _, _, seconds = measure(
            step, list(learner.parameters()), optimizer, x.device, steps=args.steps
        )
        budget = aux_budget(
            learner.aux_config, learner.geometries, learner.partition.stats, args.batch_size
        )
        fractions = budget.fractions()
        row = {
            "design": design,
            "peak_vs_e2e": peak / e2e_peak,
            "time_vs_e2e": seconds / e2e_time,
            "aux_params": fractions["params"],
            "aux_flops": fractions["flops"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del learner, optimizer, step
    setting = f"{args.model} K={args.k} R1E b{args.batch_size} 224 px, CPU, {torch.__version__}"
    lines = [
        f"{setting}; ratios to end-to-end measured in the same run.",
        "",
        "| design | peak / e2e | step time / e2e | aux params | aux FLOPs |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['design']} | {r['peak_vs_e2e']:.3f} | {r['time_vs_e2e']:.2f} | "
        f"{r['aux_params']:.1%} | {r['aux_flops']:.1%} |"
        for r in rows
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "context_cost_cpu.json").write_text(json.dumps({"setting": setting, "rows": rows}))
    (RESULTS / "context_cost_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
