"""contsup.geometry: pooling between grids."""

import pytest
import torch
from torch import nn

from contsup.geometry import Geometry, pool_to


@pytest.mark.parametrize("size,out", [(32, 32), (32, 16), (32, 8), (14, 7), (28, 7), (7, 3)])
def test_pooling_is_adaptive_average_pooling(size, out):
    pool = pool_to(Geometry("NCHW", 4, size, size), Geometry("NCHW", 4, out, out))
    x = torch.randn(2, 4, size, size)
    assert torch.allclose(pool(x), nn.AdaptiveAvgPool2d(out)(x), atol=1e-6)
