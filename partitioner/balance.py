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

__all__ = ["min_max_partition", "uniform_partition", "group_sums"]


def min_max_partition(costs: Sequence[float], k: int) -> list[int]:
    """Split ``costs`` into ``k`` non-empty contiguous groups minimising the largest sum.

    Example::

        >>> min_max_partition([4, 1, 1, 4, 2], 3)
        [2, 4]

    Returns the ``k - 1`` split indices: group ``i`` is ``costs[s[i-1]:s[i]]``.
    Costs must be non-negative. Exact, in O(k n log n): with ``best[g][j]`` the
    optimum for the first ``j`` chunks in ``g`` groups, ``best[g-1][i]`` grows
    with ``i`` while the last group's sum ``S[j] - S[i]`` shrinks, so the best
    ``i`` sits where the two cross and a binary search finds it.
    """
    n = len(costs)
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} chunks into {k} non-empty groups (need 1 <= k <= {n})")
    if any(c < 0 for c in costs):
        raise ValueError("costs must be non-negative")
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
    splits = []
    j = n
    for choice in reversed(choices):
        j = choice[j]
        splits.append(j)
    return splits[::-1]


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
