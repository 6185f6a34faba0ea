"""Draw where the cuts fall along the network's cost profile."""

from __future__ import annotations

from pathlib import Path

from partitioner.plan import Analysis, Partition

__all__ = ["plot_costs"]

_UNITS = {
    "flops": ("MFLOPs", 1e6),
    "memory": ("KiB saved for backward", 1024),
    "params": ("KiB of parameters", 1024),
    "time": ("ms", 1e-3),
}


def plot_costs(analysis: Analysis, part: Partition, path: str | Path, title: str = "") -> None:
    """Save a figure of per-node cost along depth, segments shaded, cuts marked.

    Example::

        analysis = analyze(model, x)
        plot_costs(analysis, analysis.partition(8), "cost.png")

    The lower panel shows cumulative cost: equal steps between cuts mean balance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit, scale = _UNITS[part.objective]
    costs = [c / scale for c in analysis.node_costs(part.objective)]
    by_name = {n.name: i for i, n in enumerate(analysis.nodes)}
    cuts = [max(by_name[t.node] for t in b.tensors) + 0.5 for b in part.boundaries]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    top.bar(range(len(costs)), costs, width=1.0, color="#4878a8")
    cumulative = [sum(costs[: i + 1]) for i in range(len(costs))]
    bottom.plot(range(len(costs)), cumulative, color="#4878a8")
    for start, stop, shade in zip([-0.5, *cuts], [*cuts, len(costs) - 0.5], range(part.k)):
        for axis in (top, bottom):
            axis.axvspan(start, stop, color="#f0f0f0" if shade % 2 else "white", zorder=0)
    for cut in cuts:
        for axis in (top, bottom):
            axis.axvline(cut, color="#c44e52", linewidth=1)
    top.set_ylabel(f"{unit} per node")
    bottom.set_ylabel(f"cumulative {unit}")
    bottom.set_xlabel("node (graph order); red lines are cuts")
    top.set_title(
        title or f"K={part.k}, objective={part.objective}, imbalance={part.imbalance:.3f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
