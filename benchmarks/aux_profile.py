"""Where a local-learning step's time goes: torch.profiler by part (segment, head,
bridge, loss, optimizer) and by op, against end-to-end and the floor.

The same configurations as ``contsup bench``, one synthetic batch, the cuts of
the first context row for all (balanced by memory): ``e2e``, ``floor`` (R0,
GAP-Linear heads), ``R0`` with the chosen head and each context mode with it.
Forward ops are charged to the head, bridge or segment whose ``forward`` runs
them; backward ops to the part whose forward op made their autograd node (the
profiler's sequence numbers link the two).

    OMP_NUM_THREADS=1 python benchmarks/aux_profile.py resnet32 --k 16 --batch-size 128 \\
        --input-size 3 32 32 --steps 2

Prints, per configuration, milliseconds per step by part, then the head's and
the bridge's time by op (all heads and all bridges of the step together).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import timm
import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

import contsup  # noqa: F401  (registers the CIFAR ResNets)
from contsup.bench import _e2e_step, _local_step, _sgd
from contsup.cpu_allocator import keep_freed_memory
from contsup.learner import wrap

PARTS = ("segment", "head", "bridge", "loss+other", "optimizer")
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


@contextmanager
def scoped(modules: dict[str, list[torch.nn.Module]]) -> Iterator[None]:
    """Every ``forward`` of ``modules[part]`` runs inside a profiler range named ``part``."""
    handles = []
    for part, members in modules.items():
        for module in members:
            ranges = []

            def enter(_module, _args, part=part, ranges=ranges):
                ranges.append(record_function(part))
                ranges[-1].__enter__()

            def leave(_module, _args, _out, ranges=ranges):
                ranges.pop().__exit__(None, None, None)

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _part_of(event) -> str | None:
    while event is not None:
        if event.name in PARTS:
            return event.name
        event = event.cpu_parent
    return None


def attribute(events) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Microseconds by part, and by (part, op): top-level forward ops in a part's range,
    backward nodes by the part of the forward op that made them, the optimizer's step."""
    by_seq: dict[int, str] = {}
    for event in events:
        # Ops that make no autograd node (detach, argmax) carry the next node's number.
        part = _part_of(event) if event.sequence_nr >= 0 else None
        if part is not None:
            by_seq.setdefault(event.sequence_nr, part)
    parts: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in events:
        parent = event.cpu_parent
        if event.name.startswith(BACKWARD_PREFIX):
            part = by_seq.get(event.sequence_nr, "loss+other")
            op = event.name.removeprefix(BACKWARD_PREFIX)
        elif event.name.startswith("Optimizer.step") or event.name.startswith(
            "Optimizer.zero_grad"
        ):
            part, op = "optimizer", event.name
        elif parent is not None and parent.name in PARTS[:3] and event.name not in PARTS:
            part, op = parent.name, event.name
        elif (parent is None or parent.name == "step") and event.name.startswith("aten::"):
            part, op = "loss+other", event.name
        else:
            continue
        parts[part] += event.cpu_time_total
        ops[part][op] += event.cpu_time_total
    return parts, ops


def profiled(step, steps: int, modules: dict[str, list[torch.nn.Module]]):
    """(ms per step from the profile, ms per step by part, by (part, op))."""
    for _ in range(2):
        step()
    with scoped(modules), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("step"):
                step()
    events = prof.events()
    total = sum(e.cpu_time_total for e in events if e.name == "step")
    parts, ops = attribute(events)
    per = 1e3 * steps
    return (
        total / per,
        {p: t / per for p, t in parts.items()},
        {p: {o: t / per for o, t in v.items()} for p, v in ops.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--context", default="R0,R1E")
    parser.add_argument("--head", default="1c2f")
    parser.add_argument("--aux", default="scaled")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input-size", type=int, nargs=3, default=(3, 32, 32))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=8, help="ops listed per head and bridge")
    args = parser.parse_args()
    keep_freed_memory()  # the CLI's allocator setting (contsup.cpu_allocator)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, *args.input_size)
    y = torch.randint(0, 10, (args.batch_size,))

    def make():
        return timm.create_model(args.model, num_classes=10)

    model = make()
    rows = [("e2e", *profiled(partial(_e2e_step, model, _sgd(model.parameters()), x, y),
                               args.steps, {"segment": [model]}))]  # fmt: skip
    contexts = args.context.split(",")
    first = wrap(make(), args.k, context=contexts[0], aux=args.aux, head=args.head,
                 objective="memory", example_input=x)  # fmt: skip
    configs = [("floor", "R0", "0c1f")] + [(f"{c} {args.head}", c, args.head) for c in contexts]
    for name, context, head in configs:
        plain = {"momentum_heads": None} if name == "floor" else {}  # as contsup bench's floor
        learner = wrap(make(), args.k, context=context, aux=args.aux, head=head,
                       cuts=first.partition, example_input=x, **plain)  # fmt: skip
        step = partial(_local_step, learner, _sgd(learner.parameters()), x, y)
        modules = {"segment": list(learner.segments), "head": list(learner.heads),
                   "bridge": list(learner.bridges)}  # fmt: skip
        rows.append((name, *profiled(step, args.steps, modules)))
    e2e = rows[0][1]
    print(f"{args.model} K={args.k} b{args.batch_size} {tuple(args.input_size)}, "
          f"{torch.get_num_threads()} threads, ms per step (profiled)\n")  # fmt: skip
    print("| config | step | / e2e | " + " | ".join(PARTS) + " |")
    print("|---|---|---|" + "---|" * len(PARTS))
    for name, total, parts, _ in rows:
        cells = [f"{parts.get(p, 0.0):.1f}" for p in PARTS]
        print(f"| {name} | {total:.1f} | {total / e2e:.2f} | " + " | ".join(cells) + " |")
    for name, _, parts, ops in rows[1:]:
        for part in ("head", "bridge", "loss+other"):
            if not ops.get(part):
                continue
            top = sorted(ops[part].items(), key=lambda kv: -kv[1])[: args.top]
            listed = ", ".join(f"{op} {ms:.1f}" for op, ms in top)
            print(f"\n{name}, {part} ({parts[part]:.1f} ms): {listed}")


if __name__ == "__main__":
    main()
