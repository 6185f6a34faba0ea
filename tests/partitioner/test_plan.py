"""partitioner.plan: analysis, balanced partitions, saved plans and ownership."""

import re
import warnings

import pytest
import torch
from torch import nn

import partitioner
from partitioner import Partition, PartitionError, PartitionWarning
from partitioner.balance import min_max_partition
from tests.conftest import create, twin


@pytest.mark.parametrize(
    "name,size", [("resnet32", 32), ("vit_tiny_patch16_224", 224), ("efficientnet_b0", 64)]
)
def test_every_parameter_and_buffer_in_exactly_one_segment(name, size):
    model = create(name, num_classes=10)
    part = partitioner.partition(model, torch.randn(1, 3, size, size), k=6)
    owners: dict[int, list[int]] = {}
    for i, seg in enumerate(part.segments):
        for _, t in [*seg.named_parameters(), *seg.named_buffers()]:
            owners.setdefault(id(t), []).append(i)
    expected = {id(t) for t in [*model.parameters(), *model.buffers()]}
    assert set(owners) == expected
    assert all(len(o) == 1 for o in owners.values())
    # Segments keep the model's names: their state dicts tile the model's.
    keys = [k for seg in part.segments for k in seg.state_dict()]
    assert sorted(keys) == sorted(model.state_dict())


def test_resnet110_flops_cuts_fall_on_block_outputs():
    part = partitioner.partition(create("resnet110"), torch.randn(1, 3, 32, 32), k=16)
    assert len(part.boundaries) == 15
    for b in part.boundaries:
        assert re.fullmatch(r"layer[123]_\d+_act2", b.node), b.node
        assert b.layout == "NCHW" and b.dtype == "torch.float32"
    assert part.imbalance < 1.25


def test_resnet110_memory_cuts_match_the_papers_shape():
    part = partitioner.partition(
        create("resnet110"), torch.randn(1, 3, 32, 32), k=4, objective="memory"
    )
    stages = [int(b.node[len("layer")]) for b in part.boundaries]
    # docs/paper.md's memory-balanced ResNet-110 K=4: [1,6] [1,14] [2,8]
    assert stages == [1, 1, 2]
    by_flops = partitioner.partition(create("resnet110"), torch.randn(1, 3, 32, 32), k=4)
    assert [int(b.node[len("layer")]) for b in by_flops.boundaries] != stages


def test_imbalance_is_the_optimum_over_candidates():
    model = create("resnet56")
    analysis = partitioner.analyze(model, torch.randn(1, 3, 32, 32))
    part = analysis.partition(8)
    chunks = analysis.chunk_costs("flops")
    from partitioner.balance import group_sums, min_max_partition

    best = max(group_sums(chunks, min_max_partition(chunks, 8)))
    assert max(s.flops for s in part.stats) == best
    assert part.imbalance == pytest.approx(best / (sum(chunks) / 8))


def test_json_round_trip_reapplies_to_a_fresh_model():
    torch.manual_seed(1)
    model = create("resnet32")
    x = torch.randn(2, 3, 32, 32)
    part = partitioner.partition(model, x, k=4, objective="memory")
    torch.manual_seed(1)
    fresh = create("resnet32")
    again = Partition.from_json(part.to_json(model="resnet32"), fresh)
    assert again.boundaries[0].node == part.boundaries[0].node
    assert [b.tensors for b in again.boundaries] != [] and again.objective == "memory"
    assert [b.node for b in again.boundaries] == [b.node for b in part.boundaries]
    assert again.to_json() == part.to_json()
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), twin(fresh).eval()(x))


def test_a_plan_for_another_model_is_rejected():
    plan = partitioner.partition(create("resnet56"), torch.randn(1, 3, 32, 32), k=8).to_json()
    with pytest.raises(PartitionError, match="does not fit"):
        Partition.from_json(plan, create("resnet20"))
    with pytest.raises(PartitionError, match="not a partition plan"):
        Partition.from_json("{oops", create("resnet20"))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))

    def forward(self, x):
        return self.embed(self.body(self.embed(x)))


def test_tied_weights_across_segments_are_a_clear_error():
    with pytest.raises(PartitionError, match=r"'embed\.weight' is used by segments 0 and \d; tied"):
        partitioner.partition(Tied(), torch.randn(2, 8), k=3)


@pytest.mark.parametrize("k", [0, 60, 2.5, True])
def test_bad_k_names_the_largest_valid_k(k):
    with pytest.raises(PartitionError, match="between 1 and 59"):
        partitioner.partition(create("resnet110"), torch.randn(1, 3, 32, 32), k=k)


def test_unknown_objective():
    with pytest.raises(PartitionError, match="unknown objective 'speed'"):
        partitioner.partition(create("resnet20"), torch.randn(1, 3, 32, 32), k=2, objective="speed")


def test_input_size_the_model_rejects():
    with pytest.raises(partitioner.InputSizeError, match=r"input of shape \(1, 3, 100, 100\)"):
        partitioner.partition(create("vit_tiny_patch16_224"), torch.randn(1, 3, 100, 100), k=2)


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class WithDynamicBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.gate = DataDependent()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.gate(self.stem(x)))


def test_untraceable_module_is_named_with_the_fix():
    with pytest.raises(partitioner.UntraceableModelError) as error:
        partitioner.partition(WithDynamicBlock(), torch.randn(2, 4), k=2)
    message = str(error.value)
    assert "'gate' (DataDependent)" in message
    assert "register_leaf_module(DataDependent)" in message
    assert "\n" not in message
    part = partitioner.partition(
        WithDynamicBlock(), torch.randn(2, 4), k=2, leaf_modules=[DataDependent]
    )
    assert part.k == 2


def test_time_objective_balances_measured_time():
    """The cuts minimise the slowest segment's measured time, over every choice of cuts."""
    analysis = partitioner.analyze(create("resnet20"), torch.randn(8, 3, 32, 32), measure_time=True)
    part = analysis.partition(3, "time")
    assert part.objective == "time" and all(s.time_s > 0 for s in part.stats)
    chunks = analysis.chunk_costs("time")
    best = min(
        max(sum(chunks[:a]), sum(chunks[a:b]), sum(chunks[b:]))
        for a in range(1, len(chunks) - 1)
        for b in range(a + 1, len(chunks))
    )
    assert max(s.time_s for s in part.stats) == pytest.approx(best, rel=1e-9)


def test_no_segment_is_left_without_parameters():
    with torch.device("meta"):
        model = create("convnext_tiny")
    x = torch.empty(2, 3, 224, 224, device="meta")
    part = partitioner.partition(model, x, 16, "memory")
    assert part.k == 16 and all(s.params > 0 for s in part.stats), [s.params for s in part.stats]
    owners = [id(p) for seg in part.segments for p in seg.parameters()]
    assert sorted(owners) == sorted(id(p) for p in model.parameters())


def test_a_k_that_forces_a_segment_without_parameters_warns_and_cuts_anyway():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    analysis = partitioner.analyze(model, torch.randn(2, 4))
    # The bare optimum for k=3 by memory is a segment of a lone ReLU ...
    splits = min_max_partition(analysis.chunk_costs("memory"), 3)
    assert 0 in [s.params for s in analysis.split([s - 1 for s in splits], "memory").stats]
    # ... so the ReLUs join the Linears before them.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        three = analysis.partition(3, "memory")
    assert [s.params for s in three.stats] == [20, 20, 10]
    # Three stretches have parameters: a fourth segment cannot have any.
    with pytest.warns(PartitionWarning, match="k=4 leaves no other choice than 1 segment"):
        four = analysis.partition(4, "memory")
    assert [s.params for s in four.stats].count(0) == 1
