"""contsup.peak: a training step's peak, predicted on the meta device."""

import pytest
import timm
import torch

import contsup
from contsup.peak import predict_step

BATCH = 8


@pytest.mark.parametrize("context", ["E", "R1E", "R0"])
def test_units_priced_once_for_many_k_give_each_k_its_own_peak(context):
    model = timm.create_model("resnet20", num_classes=10).to("meta")
    x = torch.empty(BATCH, 3, 32, 32, device="meta")
    y = torch.zeros(BATCH, dtype=torch.long, device="meta")
    units = {}
    for k in (1, 2, 3, 4, 6):
        learner = contsup.wrap(model, k, context=context, objective="memory", example_input=x)
        alone = predict_step(learner, x, y)
        assert predict_step(learner, x, y, units=units) == alone
    assert len(units) < 1 + 2 + 3 + 4 + 6  # some units recurred
