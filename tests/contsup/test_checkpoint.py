"""contsup.checkpoint on its own: tensors and state round-trip, and nothing in the
files is trusted."""

import json
import pickle
import random

import pytest
import torch

from contsup.checkpoint import (
    CheckpointError,
    checkpoint_entries,
    load_checkpoint,
    load_tensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
    tensors_dir,
)


def _save(run, epoch, value, keep=(), **state):
    tensors = {"w": torch.full((2, 3), float(value)), "b": torch.arange(3.0) + value}
    save_checkpoint(run, tensors, {"epoch": epoch, **state}, keep=keep)
    return tensors


def test_tensors_and_state_round_trip(tmp_path):
    saved = _save(tmp_path, 1, 7, metrics=[{"test_accuracy": 0.5}])
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and state["metrics"] == [{"test_accuracy": 0.5}]
    assert state["tensors"] == tensors_dir(1)
    entries = checkpoint_entries(tmp_path, state)
    assert {name: tuple(e.size) for name, e in entries.items()} == {"w": (2, 3), "b": (3,)}
    loaded = {name: torch.zeros_like(t) for name, t in saved.items()}
    load_tensors(tmp_path, state, loaded)
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)


def test_a_new_epoch_replaces_the_old_but_keeps_what_it_is_told(tmp_path):
    _save(tmp_path, 1, 1)
    _save(tmp_path, 2, 2, best={"epoch": 1, "tensors": tensors_dir(1)}, keep=(tensors_dir(1),))
    _save(tmp_path, 3, 3, best={"epoch": 1, "tensors": tensors_dir(1)}, keep=(tensors_dir(1),))
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-e*"))
    assert kept == [tensors_dir(1), tensors_dir(3)]
    assert load_checkpoint(tmp_path)["epoch"] == 3
    best = load_checkpoint(tmp_path, best=True)
    w = {"w": torch.zeros(2, 3)}
    load_tensors(tmp_path, best, w)
    assert best["epoch"] == 1 and torch.equal(w["w"], torch.ones(2, 3))


def test_a_tensor_of_another_shape_or_name_is_refused(tmp_path):
    _save(tmp_path, 1, 0)
    state = load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"w is \(2, 3\) there, \(3, 2\) here"):
        load_tensors(tmp_path, state, {"w": torch.zeros(3, 2)})
    with pytest.raises(CheckpointError, match="it has no v"):
        load_tensors(tmp_path, state, {"v": torch.zeros(1)})


@pytest.mark.parametrize("tensors", ["../elsewhere", "/tmp", "missing"])
def test_a_pointer_outside_the_run_is_refused(tmp_path, tensors):
    _save(tmp_path, 1, 0)
    pointer = tmp_path / "checkpoint.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "tensors": tensors}))
    with pytest.raises(CheckpointError, match="names tensors that are not in"):
        load_checkpoint(tmp_path)


class _Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('ran code from a checkpoint')",))


def test_metadata_that_would_run_code_is_refused(tmp_path):
    _save(tmp_path, 1, 0)
    state = load_checkpoint(tmp_path)
    (tmp_path / state["tensors"] / ".metadata").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError, match="builtins.exec is not part of a DCP checkpoint"):
        checkpoint_entries(tmp_path, state)
    with pytest.raises(CheckpointError, match="not part of a DCP checkpoint"):
        load_tensors(tmp_path, state, {"w": torch.zeros(2, 3)})


def test_no_checkpoint_and_a_foreign_json_are_one_sentence(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({"version": 99, "tensors": "x"}))
    with pytest.raises(CheckpointError, match="is not a contsup checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)


def test_random_state_round_trips_through_json():
    generator = torch.Generator().manual_seed(3)
    state = json.loads(json.dumps(rng_state(generator)))
    first = (torch.rand(3), random.random(), torch.rand(3, generator=generator))
    set_rng_state(state, generator)
    again = (torch.rand(3), random.random(), torch.rand(3, generator=generator))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert torch.equal(first[2], again[2])
    with pytest.raises(CheckpointError, match="random state is malformed"):
        set_rng_state({**state, "torch": "not base64!"}, generator)
