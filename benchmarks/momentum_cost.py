"""What momentum heads cost: one step's peak and time against end-to-end's, on the CPU.

ResNet-32 at the paper's K=16 cuts, R1E with the default modules, with and without
momentum heads (``--momentum-heads``), and end-to-end, measured in one run as
``contsup bench`` measures them (bytes saved for backward counted by hooks, plus
weights, gradients and momentum; the median of a few steps' wall time).

    python benchmarks/momentum_cost.py                  # 3x32x32, batch 128
    python benchmarks/momentum_cost.py --batch-size 32 --size 64
"""

from __future__ import annotations

import argparse

import timm
import torch

from contsup.bench import _e2e_step, _local_step, _sgd, measure
from contsup.cpu_allocator import keep_freed_memory
from contsup.learner import wrap

try:
    from learning import paper_cuts  # run as a script from benchmarks/
except ImportError:  # pragma: no cover - imported as benchmarks.momentum_cost
    from benchmarks.learning import paper_cuts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--momentum", type=float, default=0.99)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()  # the CLI's allocator setting (contsup.cpu_allocator)
    torch.set_num_threads(1)
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch_size,))
    cpu = torch.device("cpu")
    rows = {}
    for name, k, momentum in (
        ("end-to-end", 1, None),
        ("K=16 R1E", 16, None),
        ("K=16 R1E, momentum heads", 16, args.momentum),
    ):
        torch.manual_seed(0)
        model = timm.create_model("resnet32", num_classes=10)
        if k == 1:
            params = list(model.parameters())
            optimizer = _sgd(params)
            step = lambda m=model, o=optimizer: _e2e_step(m, o, x, y)  # noqa: E731
        else:
            learner = wrap(model, cuts=paper_cuts(k), context="R1E", example_input=x[:2],
                           momentum_heads=momentum)  # fmt: skip
            params = list(learner.parameters())
            optimizer = _sgd(params)
            step = lambda m=learner, o=optimizer: _local_step(m, o, x, y)  # noqa: E731
        rows[name] = measure(step, params, optimizer, cpu, steps=args.steps)
    e2e_peak, e2e_time = rows["end-to-end"][0], rows["end-to-end"][3]
    print(f"resnet32, {args.size} px, batch {args.batch_size}, one CPU thread")
    print("| configuration | peak MiB | peak / e2e | ms/step | time / e2e |")
    print("|---|---|---|---|---|")
    for name, (peak, _, _, seconds) in rows.items():
        print(
            f"| {name} | {peak / 2**20:.1f} | {peak / e2e_peak:.3f} | {1000 * seconds:.0f} | "
            f"{seconds / e2e_time:.2f} |"
        )


if __name__ == "__main__":
    main()
