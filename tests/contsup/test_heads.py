"""contsup.heads: head configuration names."""

import pytest
import torch
from torch import nn

from contsup.auxiliary.paper import build_head
from contsup.geometry import Geometry


@pytest.mark.parametrize(
    "config,convs,linears",
    [
        ("0c1f", 0, 1),
        ("0c2f", 0, 2),
        ("1c1f", 1, 1),
        ("1c2f", 1, 2),
        ("1c3f", 1, 3),
        ("2c2f", 2, 2),
    ],
)
def test_head_configs(config, convs, linears):
    head = build_head(config, Geometry("NCHW", 16, 32, 32), 10, width=64)
    assert sum(isinstance(m, nn.Conv2d) for m in head) == convs
    assert sum(isinstance(m, nn.Linear) for m in head) == linears
    assert head(torch.randn(2, 16, 32, 32)).shape == (2, 10)
