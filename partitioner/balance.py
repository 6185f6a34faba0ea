"""Contiguous min-max partitioning: the balancing algorithm.

Given the cost of each chunk between consecutive cut candidates, choose K-1 cuts
so the most expensive segment is as cheap as possible. ``min_max_partition``
solves it exactly by dynamic programming; ``uniform_partition`` is the
equal-count baseline (DeepSpeed's ``uniform`` method) used in benchmarks.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import accumulate

import torch

__all__ = ["min_max_partition", "uniform_partition", "group_sums"]


def min_max_partition(
    costs: Sequence[float],
    k: int,
    *,
    split_costs: Sequence[tuple[float, float]] | None = None,
) -> list[int]:
    """Split ``costs`` into ``k`` non-empty contiguous groups minimising the largest cost.

    Example::

        >>> min_max_partition([4, 1, 1, 4, 2], 3)
        [2, 4]
        >>> min_max_partition([4, 1, 1, 4, 2], 3, split_costs=[(0, 0), (9, 0), (0, 0), (0, 0)])
        [1, 3]

    Returns the ``k - 1`` split indices: group ``i`` is ``costs[s[i-1]:s[i]]``.
    A group costs the sum of its chunks, plus, with ``split_costs``, what a split
    adds to the groups beside it: ``split_costs[s - 1] = (before, after)`` is
    added to the group that ends at split ``s`` and to the one that starts there.
    Costs must be non-negative.

    Exact. Without split costs, O(k n log n): with ``best[g][j]`` the optimum for
    the first ``j`` chunks in ``g`` groups, ``best[g-1][i]`` grows with ``i`` while
    the last group's sum ``S[j] - S[i]`` shrinks, so the best ``i`` sits where the
    two cross and a binary search finds it. Split costs break that order, so with
    them every ``i`` is tried: O(k n^2). Of the splits that reach the optimum, the
    most even one (least sum of squared group costs) is returned.
    """
    n = len(costs)
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} chunks into {k} non-empty groups (need 1 <= k <= {n})")
    if any(c < 0 for c in costs):
        raise ValueError("costs must be non-negative")
    if split_costs is not None:
        if len(split_costs) != n - 1:
            raise ValueError(f"need one (before, after) pair per split point ({n - 1})")
        return _min_max_with_split_costs(costs, k, split_costs)
    prefix = [0, *accumulate(costs)]
    best = prefix[:]  # one group: the first j chunks cost prefix[j]
    choices: list[list[int]] = []
    for groups in range(2, k + 1):
        new_best = [float("inf")] * (n + 1)
        choice = [0] * (n + 1)
        for j in range(groups, n + 1):
            lo, hi = groups - 1, j - 1
            # smallest i in [lo, hi] with best[i] >= prefix[j] - prefix[i]
            i = lo + bisect.bisect_left(
                range(lo, hi + 1), True, key=lambda i: best[i] >= prefix[j] - prefix[i]
            )
            for cand in (i - 1, i):
                if lo <= cand <= hi:
                    value = max(best[cand], prefix[j] - prefix[cand])
                    if value < new_best[j]:
                        new_best[j], choice[j] = value, cand
        best = new_best
        choices.append(choice)
    return _backtrack(choices, n)


def uniform_partition(n: int, k: int) -> list[int]:
    """Split ``n`` chunks into ``k`` groups of (nearly) equal count.

    Example::

        >>> uniform_partition(10, 3)
        [3, 7]
    """
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} chunks into {k} non-empty groups (need 1 <= k <= {n})")
    return [round(i * n / k) for i in range(1, k)]


def group_sums(costs: Sequence[float], splits: Sequence[int]) -> list[float]:
    """The sum of each group that ``splits`` cuts ``costs`` into.

    Example::

        >>> group_sums([4, 1, 1, 4, 2], [2, 4])
        [5, 5, 2]
    """
    bounds = [0, *splits, len(costs)]
    return [sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])]


def _backtrack(choices: list[list[int]], n: int) -> list[int]:
    splits = []
    j = n
    for choice in reversed(choices):
        j = choice[j]
        splits.append(j)
    return splits[::-1]


def _min_max_with_split_costs(
    costs: Sequence[float], k: int, split_costs: Sequence[tuple[float, float]]
) -> list[int]:
    # The O(k n^2) recurrences run a group count at a time over all (i, j) pairs at
    # once (float64, the same sums in the same order as Python's floats): a planner
    # balances every K of a model, and in Python loops this was most of its time.
    n = len(costs)
    prefix = torch.tensor([0.0, *accumulate(costs)], dtype=torch.float64)
    # Nothing is added before the first chunk or after the last.
    before = torch.tensor([0.0, *(b for b, _ in split_costs), 0.0], dtype=torch.float64)
    after = torch.tensor([0.0, *(a for _, a in split_costs), 0.0], dtype=torch.float64)
    # group[i, j]: the cost of chunks i..j-1 as one group; only i < j is a group.
    group = prefix[None, :] - prefix[:, None] + after[:, None] + before[None, :]
    index = torch.arange(n + 1)
    inf = torch.tensor(float("inf"), dtype=torch.float64)

    def grouped(groups: int) -> torch.Tensor:
        """Which (i, j) can end a split into ``groups``: i >= groups - 1 chunks before, i < j."""
        return (index[:, None] >= groups - 1) & (index[:, None] < index[None, :])

    best = group[0].clone()
    for groups in range(2, k + 1):
        options = torch.where(grouped(groups), torch.maximum(best[:, None], group), inf)
        best = torch.where(index >= groups, options.min(dim=0).values, inf)
    # Many splits reach the optimum (segments too small to matter can go anywhere);
    # of those, take the most even one: the least sum of squared group costs. That
    # spreads the small segments and avoids cuts whose split costs are high.
    bound = best[n] * (1 + 1e-9)
    fits = group <= bound
    total = torch.where(fits[0], group[0] ** 2, inf)
    choices: list[torch.Tensor] = []
    for groups in range(2, k + 1):
        options = torch.where(grouped(groups) & fits, total[:, None] + group**2, inf)
        new_total, choice = options.min(dim=0)  # the first i at the least, as a loop finds
        total = torch.where(index >= groups, new_total, inf)
        choices.append(choice)
    return _backtrack(torch.stack(choices).tolist() if choices else [], n)
