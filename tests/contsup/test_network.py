"""contsup.network: the carry window and the exported inference network."""

import torch

from contsup.context import ContextMode
from contsup.learner import wrap
from tests.conftest import create


def test_carry_keeps_the_window_later_bridges_read():
    from contsup.network import Carry

    carry = Carry(ContextMode(2, False))
    for h in ("h0", "h1", "h2"):
        carry.keep(h)
    assert carry.inputs == [None, "h1", "h2"] and carry.window() == ["h1", "h2"]
    resumed = Carry.resumed(carry.mode, "out", carry.window(), unit=4)
    assert resumed.inputs == carry.inputs and resumed.out == "out"
    assert Carry(ContextMode(0, True)).window() == []


def test_export_is_a_standalone_copy_with_identical_outputs():
    learner = wrap(create("resnet20"), 4, context="R1E").eval()
    x = torch.randn(2, 3, 32, 32)
    net = learner.export()
    with torch.no_grad():
        assert torch.equal(net(x), learner(x))
    assert not any(
        isinstance(m, type(learner.heads[0])) and m in list(net.modules()) for m in learner.heads
    )
    assert {id(p) for p in net.parameters()}.isdisjoint(id(p) for p in learner.parameters())


def test_exported_network_pickles_and_default_input_follows_img_size(tmp_path):
    # A ViT built for 32x32 keeps timm's 224 default cfg; wrap must use 32x32.
    learner = wrap(create("vit_tiny_patch16_224", img_size=32, num_classes=10), 3, context="R1E")
    assert learner.partition.input_shape == (2, 3, 32, 32)
    net = learner.eval().export()
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
