"""contsup.distributed.feed: what later stages read of a batch, so what they are sent."""

import pytest
import torch

from contsup.data import BatchPart
from contsup.distributed import Needs
from contsup.learner import wrap
from tests.conftest import create


def learner(context: str, **kwargs):
    example = torch.zeros(2, 3, 16, 16)
    return wrap(create("resnet20"), 4, context=context, example_input=example, **kwargs)


@pytest.mark.parametrize(
    "context,first_stage_units,image",
    [
        ("R0", range(0, 1), False),  # labels only
        ("R1E", range(0, 3), True),  # the last unit's E bridge reads the image
        ("R2", range(0, 2), True),  # unit 2's bridge reads boundary 0 and the image for -1
        ("R2", range(0, 3), False),  # unit 3 reads boundaries 2 and 1
    ],
)
def test_later_stages_are_sent_the_image_only_where_a_unit_reads_it(
    context, first_stage_units, image
):
    needs = Needs.after(learner(context), first_stage_units)
    assert needs == Needs(image=image, raw=False)


def test_a_decoders_target_is_made_from_x_when_the_data_gave_none():
    with_decoders = learner("R0", decoder=[1.0, 1.0, 0.5, 1.0])
    needs = Needs.after(with_decoders, range(0, 1))
    assert needs == Needs(image=False, raw=True)
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    sent = needs.sent(BatchPart(x, y, None, 5), with_decoders)
    assert sent.x is None and sent.y is y and sent.total == 5
    assert torch.equal(sent.raw, with_decoders.raw_of(x))
    assert sent.raw.min() >= 0 and sent.raw.max() <= 1
