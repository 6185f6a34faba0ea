"""contsup.context: context-mode strings and which earlier boundaries each boundary reads."""

import pytest

from contsup.context import ContextMode, parse_context, recent_sources
from contsup.learner import wrap
from tests.conftest import create


@pytest.mark.parametrize(
    "text,mode",
    [
        ("R0", (0, False)),
        ("E", (0, True)),
        ("R1", (1, False)),
        ("R16", (16, False)),
        ("R2E", (2, True)),
        ("R1E", (1, True)),
    ],
)
def test_parse_context(text, mode):
    assert parse_context(text) == ContextMode(*mode)
    assert str(parse_context(text)) == text


@pytest.mark.parametrize("text", ["", "R", "R0E", "E1", "r1", "R-1", "RE", "X", "R1EE"])
def test_unknown_context_mode_names_accepted_forms(text):
    with pytest.raises(ValueError, match="R0 .*E .*Rn .*RnE"):
        parse_context(text)


def test_recent_sources():
    r1, r4 = ContextMode(1, False), ContextMode(4, False)
    assert recent_sources(0, r1) == [-1]
    assert recent_sources(5, r1) == [4]
    assert recent_sources(1, r4) == [0, -1]  # the image stands in, once
    assert recent_sources(6, r4) == [5, 4, 3, 2]


def test_with_e_the_image_does_not_also_stand_in():
    """Reference R1E: at the first boundary only E is applied (no R1 encoder of the image)."""
    assert recent_sources(0, ContextMode(1, True)) == []
    assert recent_sources(1, ContextMode(4, True)) == [0]
    assert recent_sources(3, ContextMode(1, True)) == [2]
    learner = wrap(create("resnet20"), 4, context="R1E", aux="paper")
    assert len(learner.bridges[0].recent) == 0 and learner.bridges[0].image is not None
    assert all(len(b.recent) == 1 for b in learner.bridges[1:])
