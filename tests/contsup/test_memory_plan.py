"""contsup.memory_plan: the fewest segments whose predicted training step fits a budget."""

import pytest
import timm
import torch

import contsup
from contsup.bench import measure
from contsup.building import build_learner, plan_cuts
from contsup.config import TrainConfig
from contsup.data import parse_dataset
from contsup.errors import ConfigError
from contsup.memory_plan import BudgetTooSmallError, _smallest_k, parse_memory, predict_run
from contsup.peak import StepPeak

BATCH = 32
SIZE = (3, 32, 32)


def plan(memory, **options):
    # Plain heads: what is planned here is K and the batch (test_momentum_heads.py
    # plans the default's momentum heads).
    options = {"batch_size": BATCH, "device": "cpu", "momentum_heads": "off", **options}
    return contsup.plan("resnet20", memory=memory, **options)


@pytest.fixture(scope="module")
def end_to_end():
    """A budget end-to-end training fits: the plan at K=1."""
    return plan("1GiB")


@pytest.fixture(scope="module")
def tight(end_to_end):
    """A budget of 60% of end-to-end's predicted peak."""
    return plan(int(0.6 * end_to_end.end_to_end.total))


def test_parse_memory_takes_binary_units_and_refuses_the_rest():
    assert parse_memory("24GiB") == parse_memory("24G") == parse_memory("24 gb") == 24 * 2**30
    assert parse_memory("1.5MiB") == 3 * 2**19
    assert parse_memory(4096) == 4096
    for bad in ("lots", "-1GiB", "0"):
        with pytest.raises(ConfigError):
            parse_memory(bad)


def test_end_to_end_is_chosen_when_it_fits(end_to_end):
    assert end_to_end.k == 1 and end_to_end.cuts == []
    assert end_to_end.peak == end_to_end.end_to_end
    assert end_to_end.peak.total <= 2**30
    assert end_to_end.max_batch_size > BATCH


def test_a_tight_budget_takes_the_fewest_segments_that_fit(tight):
    budget = tight.memory_bytes
    assert tight.k > 1 and len(tight.cuts) == tight.k - 1
    assert tight.peak.total <= budget < tight.end_to_end.total
    config = TrainConfig(
        model="resnet20",
        dataset="synthetic",
        k=tight.k,
        objective="memory",
        batch_size=BATCH,
        device="cpu",
        **tight.options,  # the heads and bridges it was planned with
    )
    assert predict_run(config).total == tight.peak.total
    config.k = tight.k - 1
    assert predict_run(config).total > budget


def test_smaller_budgets_never_take_fewer_segments(end_to_end):
    e2e = end_to_end.end_to_end.total
    # The thin modules: with the default's (the paper's at 32 px) no K fits half of e2e.
    ks = [plan(int(f * e2e), aux="scaled").k for f in (1.0, 0.8, 0.6, 0.5)]
    assert ks == sorted(ks) and ks[0] == 1 and ks[-1] > 1


def test_a_budget_below_the_floor_is_one_sentence_naming_it(tight):
    with pytest.raises(BudgetTooSmallError) as error:
        plan(tight.floor_bytes - 1)
    message = str(error.value)
    assert "\n" not in message
    assert "below the floor of" in message and "cannot be cut" in message
    assert tight.floor_piece.split(" ")[2] in message  # the piece's first node


def test_the_largest_batch_fits_at_the_plans_cuts(tight):
    assert tight.max_batch_size >= BATCH
    config = TrainConfig(
        model="resnet20",
        dataset="synthetic",
        cuts=tight.cuts or None,
        batch_size=tight.max_batch_size,
        device="cpu",
        **tight.options,
    )
    assert predict_run(config).total <= tight.memory_bytes
    config.batch_size = int(1.1 * tight.max_batch_size) + 1
    assert predict_run(config).total > tight.memory_bytes


def test_adamw_holds_one_more_copy_of_the_weights_than_sgd(tight):
    adamw = plan(tight.memory_bytes * 4, optimizer="adamw")
    sgd = plan(tight.memory_bytes * 4)
    params = sum(p.numel() for p in timm.create_model("resnet20").parameters())
    assert adamw.k == sgd.k == 1
    assert adamw.peak.static - sgd.peak.static == 4 * params


def test_bf16_autocast_is_predicted_smaller_and_said_to_be_uncalibrated(end_to_end):
    amp = plan("1GiB", amp="bf16")
    assert amp.peak.saved < end_to_end.peak.saved
    assert any("autocast" in note for note in amp.to_dict()["uncalibrated"])


def test_cuda_adds_the_allocator_margin(end_to_end):
    cuda = plan("1GiB", device="cuda")
    assert cuda.peak.margin > end_to_end.peak.margin > 0
    assert cuda.peak.total > end_to_end.peak.total


def test_a_model_object_is_planned_on_a_copy():
    model = timm.create_model("resnet20")
    result = contsup.plan(model, memory="1GiB", batch_size=BATCH, device="cpu")
    assert result.k == 1
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_a_saved_plan_is_what_train_plan_reads(tight, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(tight.to_json())
    assert plan_cuts(path, "resnet20", SIZE) == tight.cuts
    config = TrainConfig(model="resnet20", dataset="synthetic", plan=str(path))
    learner = build_learner(config, parse_dataset("synthetic")[0])
    assert learner.k == tight.k


def test_the_planned_step_measured_on_the_cpu_fits_the_budget(tight):
    model = timm.create_model("resnet20", num_classes=10)
    x = torch.randn(BATCH, *SIZE)
    y = torch.randint(0, 10, (BATCH,))
    learner = contsup.wrap(model, cuts=tight.cuts, example_input=x, **tight.options)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.01, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        learner.local_backward(x, y)
        optimizer.step()

    params, cpu = list(learner.parameters()), torch.device("cpu")
    peak, _, static, _ = measure(step, params, optimizer, cpu, steps=1)
    weights = sum(p.numel() * p.element_size() for p in params)
    assert static == tight.peak.static + weights  # the measure counts every gradient
    assert peak <= tight.peak.total <= tight.memory_bytes


class _FakePlanner:
    """Peaks by K, not monotonic: more segments may peak higher (a larger head or an
    earlier boundary in the unit that peaks)."""

    shadowed = False  # plain heads

    def __init__(self, totals):
        self.totals = totals
        self.peaks = {}

    def peak(self, k):
        self.peaks[k] = StepPeak(static=self.totals[k], saved=0)
        return self.peaks[k]


NOT_MONOTONIC = {1: 100, 2: 80, 3: 50, 4: 60, 5: 40, 6: 45}


def test_the_search_finds_the_smallest_k_that_fits_where_the_peak_is_not_monotonic():
    planner = _FakePlanner(NOT_MONOTONIC)
    assert _smallest_k(planner, 55, max_k=6, where="a model", floor=10) == 3
    assert _smallest_k(planner, 42, max_k=6, where="a model", floor=10) == 5
    assert 6 not in planner.peaks  # it stops at the first K that fits


def test_a_budget_no_k_meets_names_the_least_of_every_k():
    planner = _FakePlanner({**NOT_MONOTONIC, 3: 35, 5: 70})
    with pytest.raises(BudgetTooSmallError) as error:
        _smallest_k(planner, 30, max_k=6, where="a model", floor=10)
    assert error.value.least_bytes == 35 and "at K=3" in str(error.value)
    assert sorted(planner.peaks) == [1, 2, 3, 4, 5, 6]
