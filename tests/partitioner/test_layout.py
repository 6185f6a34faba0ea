"""Boundary layouts are derived from the graph and match the tensors they describe."""

import math

import pytest
import timm
import torch
from torch import nn

import contsup
import partitioner
from partitioner import Partition, PartitionError

# One member of each family, at a small input it accepts; built on the meta device.
FAMILIES = [
    ("resnet18", 64, {}),
    ("convnext_atto", 64, {}),
    ("swin_tiny_patch4_window7_224", 112, {"img_size": 112}),
    ("efficientnet_b0", 64, {}),
    ("regnetx_002", 64, {}),
    ("vit_tiny_patch16_224", 64, {"img_size": 64}),
]
CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3, "NLC": 2, "NCL": 1, "NC": 1}


def on_meta(name: str, size: int, **kwargs) -> partitioner.Analysis:
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return partitioner.analyze(model, torch.empty(2, 3, size, size, device="meta"))


def width(node, analysis: partitioner.Analysis, side: str) -> int | None:
    """The channel count ``node`` makes (``side="out"``) or reads (``"in"``), if it says."""
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "layer_norm":
        return node.args[1][-1]
    if node.op != "call_module":
        return None
    module = analysis.train.get_submodule(node.target)
    for attribute in (f"{side}_channels", f"{side}_features", "num_features", "normalized_shape"):
        value = getattr(module, attribute, None)
        if value is not None:
            return value[-1] if isinstance(value, tuple) else value
    return None


def neighbour_widths(analysis: partitioner.Analysis, name: str) -> set[int]:
    """The widths of the nearest module upstream of node ``name`` and downstream of it.

    Followed through tensors computed from the input: a residual add, a permute,
    a reshape keep the channels of what they are given (a patch merge folds space
    into them, which the module downstream reads).
    """
    nodes = list(analysis.train.graph.nodes)
    live = {nodes[0]}  # the input, and everything computed from it
    for n in nodes:
        if any(i in live for i in n.all_input_nodes):
            live.add(n)
    start = next(n for n in nodes if n.name == name)
    widths: set[int] = set()
    for side, step in (("out", lambda n: n.all_input_nodes), ("in", lambda n: n.users)):
        frontier, seen = [start], {start}
        while frontier:
            here = {w for n in frontier if (w := width(n, analysis, side)) is not None}
            if here:
                widths |= here
                break
            frontier = [m for n in frontier for m in step(n) if m in live and m not in seen]
            seen.update(frontier)
    return widths


@pytest.mark.parametrize("name,size,kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_cut_declares_the_layout_of_its_tensor(name, size, kwargs):
    analysis = on_meta(name, size, **kwargs)
    for cut, _ in analysis.cuts:
        spec = analysis.boundary(cut).tensors[0]
        shape, layout = spec.shape, spec.layout
        assert layout != "unknown", spec
        if layout == "other":  # Swin's patch merging, mid-way: 6-D
            assert len(shape) > 4, spec
            continue
        # The channel axis holds what the convs, norms or linears around it make or read ...
        assert shape[CHANNEL_AXIS[layout]] in neighbour_widths(analysis, spec.node), spec
        # ... and the others the square input's grid, or its tokens.
        if layout in ("NCHW", "NHWC"):
            grid = shape[2:] if layout == "NCHW" else shape[1:3]
            assert grid[0] == grid[1] and size % grid[0] == 0, spec
    # timm's own claim, where a model makes one, agrees with the last feature map's.
    claimed = getattr(analysis.model, "output_fmt", None)
    if claimed is not None:
        maps = [analysis.boundary(c).tensors[0] for c, _ in analysis.cuts]
        assert [s.layout for s in maps if len(s.shape) == 4][-1] == claimed


def test_layouts_follow_permutes_and_token_folds():
    convnext = on_meta("convnext_atto", 224).layouts
    assert [convnext[n] for n in ("stem_0", "permute", "layer_norm", "permute_1")] == [
        "NCHW",
        "NHWC",
        "NHWC",
        "NCHW",
    ]
    vit = on_meta("vit_tiny_patch16_224", 64, img_size=64).layouts
    # patch_embed: flatten(2) gives (N, C, L), and only the transpose makes tokens.
    assert [vit[n] for n in ("patch_embed_proj", "flatten", "transpose")] == ["NCHW", "NCL", "NLC"]


def test_convnext_stem_is_channels_first_and_trains_one_local_step():
    analysis = on_meta("convnext_atto", 224)
    stem = next(analysis.boundary(c) for c, _ in analysis.cuts if c.boundary == ("stem_0",))
    assert stem.layout == "NCHW" and stem.shape == (2, 40, 56, 56)

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    learner = contsup.wrap(model, cuts=["stem_0"], context="R1E", example_input=x)
    assert learner.geometries[0].channels == 40
    step = learner.local_backward(x, y)
    assert len(step.losses) == 2 and all(math.isfinite(loss) for loss in step.losses)
    assert all(p.grad is not None for p in model.parameters())


class Opaque(nn.Module):
    """A leaf fx cannot see into: nothing tells what it does to the axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)


class WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.opaque = Opaque()
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.opaque(self.act(self.stem(x)))))


def test_a_cut_of_unknown_layout_is_refused_when_asked_for():
    x = torch.randn(2, 3, 8, 8)
    analysis = partitioner.analyze(WithOpaque(), x, leaf_modules=[Opaque])
    assert analysis.layouts["act"] == "NCHW"
    assert analysis.layouts["opaque"] == analysis.layouts["body"] == "unknown"
    with pytest.raises(PartitionError, match="'opaque'.*memory layout .*cannot be determined"):
        analysis.split_at(["opaque"])
    assert analysis.split_at(["act"]).boundaries[0].layout == "NCHW"
    # A pipeline does not read layouts, and a saved plan re-applies whatever it cut.
    part = analysis.split_at(["opaque"], require_layout=False)
    again = Partition.from_json(part.to_json(), WithOpaque(), x, leaf_modules=[Opaque])
    assert [b.layout for b in again.boundaries] == ["unknown"]


def test_balancing_prefers_cuts_of_known_layout():
    x = torch.randn(2, 3, 8, 8)
    analysis = partitioner.analyze(WithOpaque(), x, leaf_modules=[Opaque])
    # By parameters, cutting before the opaque leaf balances as well as after it.
    part = analysis.partition(2, "params")
    assert [b.layout for b in part.boundaries] == ["NCHW"]
    # Three segments balance better with a cut after it: then it is taken.
    assert "unknown" in [b.layout for b in analysis.partition(3, "params").boundaries]
