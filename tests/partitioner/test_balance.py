"""partitioner.balance: min-max partitions of a cost sequence."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioner.balance import group_sums, min_max_partition, uniform_partition


def brute_force(costs, k):
    n = len(costs)
    return min(
        max(group_sums(costs, list(splits)))
        for splits in itertools.combinations(range(1, n), k - 1)
    )


@st.composite
def costs_and_k(draw, elements):
    costs = draw(st.lists(elements, min_size=1, max_size=9))
    return costs, draw(st.integers(1, len(costs)))


@settings(max_examples=300, deadline=None)
@given(costs_and_k(st.integers(0, 50)))
def test_optimal_on_integers(case):
    costs, k = case
    splits = min_max_partition(costs, k)
    assert len(splits) == k - 1
    assert splits == sorted(set(splits)) and all(0 < s < len(costs) for s in splits)
    assert max(group_sums(costs, splits)) == brute_force(costs, k)


@settings(max_examples=200, deadline=None)
@given(costs_and_k(st.floats(0, 1e6, allow_nan=False)))
def test_optimal_on_floats(case):
    costs, k = case
    got = max(group_sums(costs, min_max_partition(costs, k)))
    assert got == pytest.approx(brute_force(costs, k), rel=1e-12, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(costs_and_k(st.integers(0, 50)))
def test_uniform_groups_differ_in_size_by_at_most_one(case):
    costs, k = case
    sizes = [
        b - a for a, b in itertools.pairwise([0, *uniform_partition(len(costs), k), len(costs)])
    ]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_large_instance_is_fast_and_no_worse_than_uniform():
    costs = [(i * 7919) % 101 + 1 for i in range(3000)]
    best = max(group_sums(costs, min_max_partition(costs, 32)))
    assert best <= max(group_sums(costs, uniform_partition(len(costs), 32)))
    assert best >= sum(costs) / 32


@pytest.mark.parametrize("k", [0, 4])
def test_rejects_impossible_k(k):
    with pytest.raises(ValueError, match="non-empty groups"):
        min_max_partition([1, 2, 3], k)


def test_rejects_negative_costs():
    with pytest.raises(ValueError, match="non-negative"):
        min_max_partition([1, -2, 3], 2)


def grouped_costs(costs, splits, split_costs):
    """Each group's cost: its chunks, plus what the splits beside it add."""
    sums = group_sums(costs, splits)
    for g, s in enumerate(splits):
        before, after = split_costs[s - 1]
        sums[g] += before
        sums[g + 1] += after
    return sums


@settings(max_examples=300, deadline=None)
@given(costs_and_k(st.integers(0, 50)), st.data())
def test_optimal_with_split_costs(case, data):
    costs, k = case
    pair = st.tuples(st.integers(0, 60), st.integers(0, 60))
    split_costs = data.draw(st.lists(pair, min_size=len(costs) - 1, max_size=len(costs) - 1))
    splits = min_max_partition(costs, k, split_costs=split_costs)
    assert len(splits) == k - 1 and splits == sorted(set(splits))
    every = [
        grouped_costs(costs, list(s), split_costs)
        for s in itertools.combinations(range(1, len(costs)), k - 1)
    ]
    best = min(max(g) for g in every)
    got = grouped_costs(costs, splits, split_costs)
    assert max(got) == best
    # Among the optimal splits, the most even: the least sum of squares.
    assert sum(c * c for c in got) == min(sum(c * c for c in g) for g in every if max(g) == best)


def test_zero_split_costs_change_nothing():
    costs = [(i * 7919) % 101 + 1 for i in range(60)]
    plain = min_max_partition(costs, 8)
    zeros = min_max_partition(costs, 8, split_costs=[(0, 0)] * 59)
    assert max(group_sums(costs, zeros)) == max(group_sums(costs, plain))


def test_split_costs_need_one_pair_per_split_point():
    with pytest.raises(ValueError, match="one \\(before, after\\) pair per split point"):
        min_max_partition([1, 2, 3], 2, split_costs=[(0, 0)])


def test_segment_extras_add_each_cuts_costs_to_the_segments_beside_it():
    from partitioner.objectives import segment_extras

    assert segment_extras([]) == [0.0]
    assert segment_extras([(1, 2), (3, 4), (5, 6)]) == [1, 5, 9, 6]
