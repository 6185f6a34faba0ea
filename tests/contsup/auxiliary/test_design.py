"""The aux designs are picked by name; one default everywhere."""

import pytest

from contsup.auxiliary import DEFAULT_DESIGN, get_design
from contsup.config import TrainConfig
from contsup.learner import wrap
from tests.conftest import create


def test_unknown_design_is_one_sentence():
    with pytest.raises(ValueError, match="unknown aux design 'bogus'.*'sized'.*'scaled'.*'paper'"):
        get_design("bogus")
    with pytest.raises(ValueError, match="unknown aux design"):
        wrap(create("resnet20"), 2, aux="bogus")


def test_the_trainer_and_wrap_share_the_default_design():
    assert TrainConfig().aux == DEFAULT_DESIGN == wrap(create("resnet20"), 2).aux_config.design
