"""partitioner.cuts: where a graph can be cut."""

import torch
from torch import nn

import partitioner
from partitioner.cost import profile
from partitioner.cuts import cut_candidates, is_carried, node_key
from partitioner.trace import trace
from tests.conftest import create


def candidates(model, x, **kwargs):
    gm = trace(model, training=False)
    return gm, cut_candidates(gm, profile(gm, x, costs=False).values, **kwargs)


def test_vit_cuts_at_every_block():
    model = create("vit_tiny_patch16_224", img_size=64)
    gm, cuts = candidates(model, torch.randn(1, 3, 64, 64))
    keys = node_key(gm)
    scopes = {keys[c.boundary[0]][0] for c in cuts}
    assert {f"blocks.{i}" for i in range(12)} <= scopes


def apply_mask(x, mask):
    return x if mask is None else x * mask


torch.fx.wrap("apply_mask")


class MaskedBlocks(nn.Module):
    """Like a transformer: forward(x, attn_mask=None) hands the mask to every block."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))

    def forward(self, x, attn_mask=None):
        for block in self.blocks:
            x = apply_mask(block(x), attn_mask)
        return x


def test_non_tensor_arguments_do_not_block_cuts():
    model = MaskedBlocks()
    gm, cuts = candidates(model, torch.randn(2, 4))
    mask = [n for n in gm.graph.nodes if n.op == "placeholder"][1]
    assert is_carried(mask, {}) and mask.users  # a value that exists, but is not a boundary
    assert [c.boundary[0] for c in cuts] == [
        "blocks_0",
        "apply_mask",
        "blocks_1",
        "apply_mask_1",
        "blocks_2",
        "apply_mask_2",
        "blocks_3",
    ]
    x = torch.randn(2, 4)
    part = partitioner.partition(model, x, k=4)
    assert torch.equal(part(x), model(x))


def test_optional_forward_arguments_trace_at_their_defaults():
    # hiera: forward(x, mask=None) with `if mask is not None:` inside.
    model = create("hiera_tiny_224")
    part = partitioner.partition(model, torch.randn(2, 3, 224, 224), k=3)
    x = torch.randn(2, 3, 224, 224)
    part.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(part(x), model(x))


class BnInplaceRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))))


def test_no_cut_before_an_in_place_op_on_the_boundary():
    _, cuts = candidates(BnInplaceRelu(), torch.randn(1, 3, 8, 8))
    names = [c.boundary[0] for c in cuts]
    assert "bn" not in names  # the next segment would overwrite what bn saved
    assert names == ["conv", "act"]


class ShapeFromInput(nn.Module):
    """Reads the batch size at the top and uses it at the end."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        batch = x.shape[0]
        return self.b(self.a(x)).reshape(batch, 2, 2)


class ShapeFromBoundary(ShapeFromInput):
    def forward(self, x):
        h = self.a(x)
        return self.b(h).reshape(h.shape[0], 2, 2)


def test_shape_values_keep_their_tensor_alive():
    _, cuts = candidates(ShapeFromInput(), torch.randn(3, 4))
    assert cuts == []  # x itself is needed at the end, through x.shape
    _, cuts = candidates(ShapeFromBoundary(), torch.randn(3, 4))
    assert [c.boundary for c in cuts] == [("a",)]


def test_shape_from_boundary_is_recomputed_in_the_next_segment():
    model = ShapeFromBoundary()
    x = torch.randn(3, 4)
    part = partitioner.partition(model, x, k=2)
    assert torch.equal(part(x), model(x))
    assert "shape" in part.segments[1].generated_code()


def test_residual_blocks_only_cut_between_blocks():
    gm, cuts = candidates(create("resnet20"), torch.randn(1, 3, 32, 32))
    inside = [c for c in cuts if "_conv" in c.boundary[0] or "_bn" in c.boundary[0]]
    assert inside == []
