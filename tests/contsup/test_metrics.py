"""contsup.metrics: sums stay on the device; a step and an evaluation read the host once."""

import pytest
import torch
import torch.nn.functional as F

from contsup.distributed import pipeline
from contsup.learner import wrap
from contsup.metrics import UnitTotals
from tests.conftest import create


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every ``Tensor.item`` and ``Tensor.tolist`` call: a host sync on an accelerator."""
    calls: list[str] = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, original=original, name=name):
            calls.append(name)
            return original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


def test_test_scores_add_up_without_a_read_and_give_the_hosts_sums(reads):
    totals = UnitTotals.zeros(2)
    batches = [(torch.randn(5, 4), torch.randint(0, 4, (5,))) for _ in range(3)]
    for scores, y in batches:
        for unit in range(2):
            totals.score(unit, scores * (unit + 1), y)
    assert reads == []
    totals.images = 15
    for unit in range(2):  # as the host summed them: python floats from each batch
        loss = sum(F.cross_entropy(s * (unit + 1), y, reduction="sum").item() for s, y in batches)
        hits = sum((s.argmax(1) == y).sum().item() for s, y in batches)
        assert totals.losses[unit].item() == loss and totals.correct[unit].item() == hits


def test_a_step_and_an_evaluation_read_the_host_once(reads):
    learner = wrap(create("resnet20"), 3, context="R1E", example_input=torch.zeros(2, 3, 16, 16))
    pipe = pipeline(learner)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    reads.clear()  # building the learner read the host (the balance): not a step
    step = pipe.local_backward(x, y)
    assert len(reads) == 1  # K losses and K counts together
    result = pipe.evaluate([(x, y), (x, y)])
    assert len(reads) == 2  # the means, once, after every batch
    assert len(step.losses) == 3 and all(isinstance(c, int) for c in step.correct)
    assert 0 <= result.accuracy <= 1 and len(result.head_accuracies) == 2
