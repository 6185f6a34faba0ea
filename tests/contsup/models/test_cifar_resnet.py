"""contsup.models.cifar_resnet: the paper's CIFAR ResNets, registered in timm."""

import math

import pytest
import timm
import torch
from torch import nn

from contsup.models import BasicBlock, CifarResNet

# Parameter counts with 10 classes, from He et al. (2016), Table 6 (0.27M ... 19.4M).
PARAMS = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "resnet1202": 19.4e6,
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_registered_in_timm_with_the_papers_size(name):
    assert timm.is_model(name)
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    assert isinstance(model, CifarResNet)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(PARAMS[name], rel=0.02)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == (int(name.removeprefix("resnet")) - 2) // 2
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_structure_and_forward():
    model = timm.create_model("resnet20", num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert [m.downsample is not None for m in model.modules() if isinstance(m, BasicBlock)] == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    assert model.layer3[0].conv1.stride == (2, 2)
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)


def test_papers_initialisation():
    torch.manual_seed(0)
    model = timm.create_model("resnet56")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    weights = torch.cat([c.weight.flatten() for c in convs if c.out_channels == 64])
    assert weights.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.02)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_rejects_a_depth_that_is_not_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)
