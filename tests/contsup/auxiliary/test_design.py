"""The aux designs: ``scaled`` stays small at 224 px, ``paper`` is picked by name."""

import pytest

from contsup.auxiliary import get_design
from contsup.learner import wrap
from tests.conftest import create


def test_unknown_design_is_one_sentence():
    with pytest.raises(ValueError, match="unknown aux design 'bogus'.*'scaled'.*'paper'"):
        get_design("bogus")
    with pytest.raises(ValueError, match="unknown aux design"):
        wrap(create("resnet20"), 2, aux="bogus")
