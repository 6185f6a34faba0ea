"""The top-level ``contsup`` namespace."""

import pytest

import contsup
from contsup.learner import LocalLearner, wrap


def test_public_api_is_exported_at_top_level():
    assert contsup.wrap is wrap
    assert contsup.LocalLearner is LocalLearner
    from contsup.distributed import pipeline
    from contsup.runs import load

    assert contsup.load is load and contsup.distributed.pipeline is pipeline
    for name in contsup.__all__:
        assert getattr(contsup, name) is not None, name
    with pytest.raises(AttributeError):
        contsup.no_such_name  # noqa: B018
