"""The rich tables ``contsup split``, ``bench`` and ``plan`` print from their results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from contsup.memory_plan import MemoryPlan
    from partitioner import Partition

__all__ = ["print_bench_table", "print_memory_plan", "print_split_table"]


def print_split_table(console: Console, summary: dict, part: Partition, batch_size: int) -> None:
    """The ``contsup split`` table of a ``split_summary``, with its aux columns if it has them.

    Example::

        plan = plan_split("resnet20", k=4)
        print_split_table(Console(), split_summary(plan), plan.partition, batch_size=32)
    """
    table = Table(
        title=f"{summary['model']} in {summary['k']} segments, balanced by {summary['objective']}"
    )
    with_aux = "context" in summary
    columns = (
        "#",
        "first node",
        "last node",
        "params",
        "GFLOPs/img",
        f"act. MiB @{batch_size}",
        *(("aux params", "aux GFLOPs/img", f"aux MiB @{batch_size}") if with_aux else ()),
        "output",
    )
    for column in columns:
        table.add_column(
            column, justify="left" if "node" in column or column == "output" else "right"
        )
    for row, output in zip(summary["segments"], _segment_outputs(part)):
        table.add_row(*_segment_cells(row, batch_size, with_aux), output)
    console.print(table)
    if with_aux:
        f = summary["aux_fractions"]
        console.print(
            f"context {summary['context']}, aux {summary['aux']}, head {summary['head']}: heads "
            f"and bridges add {f['params']:.1%} parameters, {f['flops']:.1%} forward FLOPs and "
            f"{f['saved_bytes']:.1%} saved bytes to the backbone (aux: segment k's head and "
            "the bridge into it)"
        )
    console.print(
        f"imbalance (max/mean {summary['objective']}): [bold]{summary['imbalance']:.3f}[/bold]; "
        "forward FLOPs per image (training ~3x); activation = bytes saved for backward"
    )


def _segment_outputs(part: Partition) -> list[str]:
    """What each segment hands on: its boundary's tensors with their layouts, and the
    model's output shape for the last (``-`` if it is not one tensor)."""
    outputs = [
        ", ".join(f"{'x'.join(map(str, t.shape))} {t.layout}" for t in b.tensors)
        for b in part.boundaries
    ]
    last = part.stats[-1].output_shape
    outputs.append("x".join(map(str, last)) if last else "-")
    return outputs


def _segment_cells(row: dict, batch_size: int, with_aux: bool) -> list[str]:
    """One segment's cells, from ``#`` to the aux columns (those only ``with_aux``)."""
    cells = [
        str(row["index"]),
        row["first_node"],
        row["last_node"],
        f"{row['params']:,}",
        f"{row['flops'] / batch_size / 1e9:.3f}",
        f"{row['activation_bytes'] / 2**20:.2f}",
    ]
    if with_aux:
        cells += [
            f"{row['head_params'] + row['bridge_params']:,}",
            f"{(row['head_flops'] + row['bridge_flops']) / batch_size / 1e9:.4f}",
            f"{(row['head_saved_bytes'] + row['bridge_saved_bytes']) / 2**20:.2f}",
        ]
    return cells


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_bench_table(console: Console, result: dict) -> None:
    """The ``contsup bench`` table of its ``--json`` object, ratios against e2e and the floor.

    Example::

        print_bench_table(Console(), json.loads(Path("bench.json").read_text()))
    """
    rows = result["rows"]
    e2e = next(r for r in rows if r["mode"] == "e2e")
    table = Table(
        title=f"{result['model']}, batch {result['batch_size']}, {result['device']}, "
        f"torch {result['torch']}, aux {result['aux']}"
    )
    for column in (
        "mode",
        "K",
        "context",
        "head",
        "peak MiB",
        "x e2e",
        "x floor",
        "activation MiB",
        "predicted MiB",
        "ms/step",
        "x e2e ",
        "aux params",
        "aux FLOPs",
    ):
        table.add_column(
            column, justify="left" if column in ("mode", "context", "head") else "right"
        )
    floors = {r["k"]: r for r in rows if r["mode"] == "floor"}
    for r in rows:
        floor = floors.get(r["k"]) if r["mode"] in ("floor", "local") else None
        table.add_row(
            r["mode"],
            str(r["k"]),
            r["context"] or "-",
            r["head"] or "-",
            f"{r['peak_bytes'] / 2**20:.1f}",
            f"{r['peak_bytes'] / e2e['peak_bytes']:.3f}",
            f"{r['peak_bytes'] / floor['peak_bytes']:.3f}" if floor else "-",
            f"{r['activation_bytes'] / 2**20:.1f}",
            f"{r['predicted_peak_bytes'] / 2**20:.1f}",
            f"{r['step_time_s'] * 1e3:.1f}",
            f"{r['step_time_s'] / e2e['step_time_s']:.2f}",
            _percent(r["aux_params_fraction"]),
            _percent(r["aux_flops_fraction"]),
        )
    console.print(table)
    console.print(
        "peak = activation + parameters, gradients and optimizer state"
        + ("; CPU activation = bytes saved for backward" if result["device"] == "cpu" else "")
        + "; floor = R0 with a GAP+Linear head at the first context's cuts; aux = heads and "
        "bridges as a fraction of the backbone"
    )


def print_memory_plan(console: Console, plan: MemoryPlan) -> None:
    """The ``contsup plan`` report: the K chosen, the alternatives beside it, the
    largest batch and the floor.

    Example::

        print_memory_plan(Console(), contsup.plan("resnet20", memory="64MiB", batch_size=64))
    """
    from contsup.memory_plan import format_bytes

    c, h, w = plan.input_size
    table = Table(
        title=f"{plan.model}, batch {plan.batch_size} of {c}x{h}x{w}, "
        f"{format_bytes(plan.memory_bytes)} on {plan.device}"
    )
    for column in ("training", "K", "predicted peak", "fits"):
        table.add_column(column, justify="left" if column == "training" else "right")
    for name, k, peak in (
        (f"local, context {plan.context}", plan.k, plan.peak),
        ("end-to-end", 1, plan.end_to_end),
        ("gradient checkpointing", plan.k, plan.checkpoint),
    ):
        fits = "yes" if peak.total <= plan.memory_bytes else "no"
        table.add_row(name, str(k), format_bytes(peak.total), fits)
    console.print(table)
    p = plan.peak
    notes = plan.to_dict()["uncalibrated"]
    console.print(
        f"K={plan.k}, cut after {', '.join(plan.cuts) or 'nothing'}; optimizer "
        f"{plan.optimizer}" + (f", autocast {plan.amp}" if plan.amp else "") + "\n"
        f"peak = {format_bytes(p.static)} weights and optimizer state + "
        f"{format_bytes(p.grads)} gradients so far + {format_bytes(p.saved)} saved for "
        f"backward + {format_bytes(p.kept)} batch and kept for bridges + "
        f"{format_bytes(p.transient)} transient"
        + (f" + {format_bytes(p.margin)} allocator margin" if p.margin else "")
        + (f" (segment {p.unit})" if p.unit < plan.k else " (the optimizer step)")
        + "\n"
        f"largest batch at these cuts: {plan.max_batch_size}; least memory at any K "
        f"(the floor): {format_bytes(plan.floor_bytes)}"
        + (f"\nnot calibrated by a measurement: {'; '.join(notes)}" if notes else ""),
        highlight=False,
        soft_wrap=True,
    )
