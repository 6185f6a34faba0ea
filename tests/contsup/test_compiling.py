"""contsup.compiling and ``LocalLearner.compile_units``: one compiled step per unit that
gives the eager losses, and ``--compile`` uses it."""

import torch
from torch import nn
from torch._dynamo.utils import counters

from contsup.compiling import compile_each
from contsup.learner import LocalLearner, wrap


def tiny() -> nn.Module:
    """Two conv stages: small enough to compile in seconds once the compiler is warm."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def losses_of(compiled: bool, steps: int = 3) -> tuple[list[list[float]], LocalLearner]:
    torch.manual_seed(0)
    learner = wrap(tiny(), 2, context="R1E", num_classes=10, example_input=torch.zeros(2, 3, 8, 8))
    if compiled:
        learner.compile_units()
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=data)
        y = torch.randint(0, 10, (8,), generator=data)
        optimizer.zero_grad()
        losses.append(learner.local_backward(x, y).losses)
        optimizer.step()
    return losses, learner


def test_a_compiled_run_gives_the_eager_losses_with_each_unit_compiled_once():
    eager, eager_learner = losses_of(compiled=False)
    counters.clear()
    compiled, compiled_learner = losses_of(compiled=True)
    # Bridge, segment, head and loss of each unit in one graph: K graphs, no break.
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_learner.parameters(), eager_learner.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_each_unit_compiles_into_a_cache_of_its_own():
    """Dynamo recompiles one code object at most 8 times: K=16 units must not share one."""
    layers = [nn.Linear(4 + j, 3) for j in range(10)]

    def step_of(j):
        def step(x):
            return layers[j](x).relu().sum()

        return step

    counters.clear()
    steps = compile_each([step_of(j) for j in range(10)], backend="eager")
    for j, step in enumerate(steps):
        torch.testing.assert_close(step(torch.ones(2, 4 + j)), step_of(j)(torch.ones(2, 4 + j)))
    assert counters["frames"]["ok"] == 10 and not counters["recompile_limit"]


def test_train_compile_compiles_each_unit(monkeypatch):
    from contsup.building import build
    from contsup.config import TrainConfig

    compiled = []
    monkeypatch.setattr(LocalLearner, "compile_units", lambda self: compiled.append(self))
    learner, _, _ = build(TrainConfig(model="resnet20", k=2, dataset="digits", compile=True))
    assert compiled == [learner]
