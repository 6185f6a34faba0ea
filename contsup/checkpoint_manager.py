"""A run directory's checkpoints as a run sees them: start, resume, save, keep the best.

``contsup.checkpoint`` writes and reads one checkpoint (DCP tensors and the JSON
pointer). ``CheckpointManager`` decides which: it refuses to overwrite a run or to
resume a directory without one, checks that a resumed checkpoint is the same run
(``IDENTITY``), names each tensor by one process's names, and keeps the best
epoch's tensors. Runs of older contsup are handled here only: a ``checkpoint.pt``
of contsup < 0.2 is converted on resume or when opened (``convert_legacy_run``),
and a run of contsup 0.2, whose scaled bridges had a gain, rebuilds with that
design (``with_legacy_design``) but cannot resume under today's. ``saved_config``
and ``rebuild_learner`` read a saved run's model back for ``contsup.runs``.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from contsup.auxiliary.scaled import design_of
from contsup.building import build_learner
from contsup.checkpoint import (
    LEGACY,
    POINTER,
    CheckpointError,
    checkpoint_entries,
    convert_legacy,
    load_checkpoint,
    load_tensors,
    read_legacy,
    rng_state,
    save_checkpoint,
    set_rng_state,
    tensors_dir,
)
from contsup.config import IDENTITY, TrainConfig
from contsup.data import DatasetInfo, info_record, parse_dataset
from contsup.metrics import EpochRecord
from contsup.preemption import PartialEpoch
from contsup.schedule import warmup_epochs

if TYPE_CHECKING:
    from contsup.distributed import Pipeline
    from contsup.learner import LocalLearner

__all__ = [
    "CheckpointManager",
    "check_same_run",
    "convert_legacy_run",
    "is_legacy",
    "rebuild_learner",
    "saved_config",
    "with_legacy_design",
]


class CheckpointManager:
    """The checkpoints of the run ``config`` describes, in ``config.out_dir()``.

    Example::

        manager = CheckpointManager(config)
        manager.refuse_to_clobber(resume)                 # before anything slow
        records, first, partial = manager.resume(pipe, optimizer, generator, one_process=True)
        manager.save(records, pipe, optimizer, generator, cuts, data.info)   # each epoch

    Every rank makes one and calls ``save`` (DCP writes each rank's share). A save with
    ``partial`` (a ``PartialEpoch``) is a step checkpoint, written mid-epoch.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out = config.out_dir()

    def refuse_to_clobber(self, resume: bool) -> None:
        """Raise ``CheckpointError`` unless ``resume`` says whether a checkpoint is there."""
        out = self.out
        committed = [out / name for name in (POINTER, LEGACY) if (out / name).exists()]
        if committed and not resume:
            raise CheckpointError(
                f"{committed[0]} exists; pass --resume to continue that run or choose another --out"
            )
        if resume and not committed:  # a typo must never restart a long run from scratch
            raise CheckpointError(
                f"cannot resume: {out} holds no {POINTER}; check the directory, or leave out "
                "--resume to start a new run"
            )

    def resume(
        self,
        pipe: Pipeline,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        *,
        one_process: bool,
    ) -> tuple[list[EpochRecord], int, PartialEpoch | None]:
        """Load the last checkpoint into ``pipe``, ``optimizer`` and the random state;
        its metrics, the epoch to go on with, and how far into it a step checkpoint got."""
        out, config = self.out, self.config
        if is_legacy(out):
            if not one_process:
                raise CheckpointError(
                    f"{out / LEGACY} is from contsup < 0.2; convert it first in one process "
                    f"(`contsup eval {out}` does), then resume here"
                )
            # The names it converts to are this run's: it must be the same run.
            check_same_run(read_legacy(out / LEGACY), config, out / LEGACY)
            convert_legacy(out, [name for name, _ in pipe.named_parameters()])
        state = load_checkpoint(out)
        check_same_run(state, config, out / POINTER)
        partial = _partial_epoch(state, out / POINTER)
        if design_of(config.aux, checkpoint_entries(out, state)) != config.aux:
            raise CheckpointError(
                f"{out} was trained by contsup 0.2, whose scaled bridges had a gain that this "
                "version's do not: resume it with contsup 0.2 (eval and export read it here)"
            )
        _load_state(out, state, pipe, optimizer)
        set_rng_state(state.get("rng"), generator)
        records = [EpochRecord.from_dict(record) for record in state["metrics"]]
        return records, state["epoch"] + 1, partial

    def save(
        self,
        records: list[EpochRecord],
        pipe: Pipeline,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        cuts: list[str],
        info: DatasetInfo,
        partial: PartialEpoch | None = None,
    ) -> None:
        """Commit the checkpoint of the epoch ``records[-1]`` ends, keeping the best's tensors;
        with ``partial``, of the steps done since (``epoch`` stays the last epoch ended)."""
        state: dict[str, Any] = {
            "config": asdict(self.config),
            "epoch": records[-1].epoch if records else 0,
            "rng": rng_state(generator),
            "metrics": [record.as_dict() for record in records],
            "cuts": cuts,
            "data": info_record(info),
        }
        counters = _group_counters(optimizer)
        if any(counters):
            state["optimizer_groups"] = counters
        name = None
        if partial is not None:
            state["partial_epoch"] = partial.as_dict()
            name = tensors_dir(partial.epoch, partial.step)
        best = self.best_epoch(records, ends_epoch=partial is None) if records else None
        state["best"] = {"epoch": best, "tensors": tensors_dir(best)} if best else None
        keep = (tensors_dir(best),) if best else ()
        save_checkpoint(self.out, _checkpoint_tensors(pipe, optimizer), state, keep, name=name)

    def best_epoch(self, records: list[EpochRecord], *, ends_epoch: bool = True) -> int | None:
        """The first epoch with the highest test accuracy, if its tensors are (or will be)
        on disk: the epoch being saved (``ends_epoch``), or one whose directory was kept."""
        best = max(records, key=lambda r: r.test_accuracy).epoch
        saving = ends_epoch and best == records[-1].epoch
        return best if saving or (self.out / tensors_dir(best)).is_dir() else None


def _partial_epoch(state: dict, path: Path) -> PartialEpoch | None:
    """The mid-epoch position a step checkpoint records (None: it ended an epoch)."""
    if "partial_epoch" not in state:
        return None
    try:
        partial = PartialEpoch.from_dict(state["partial_epoch"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds a malformed mid-epoch position: {error}") from error
    if partial.epoch != state["epoch"] + 1:
        raise CheckpointError(f"{path} holds a mid-epoch position that is not after its epoch")
    return partial


def _checkpoint_tensors(pipe: Pipeline, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's tensors under one process's names: ``learner.<name>`` for the
    learner's state, ``optimizer.<parameter name>.<slot>`` for the optimizer's."""
    tensors = {f"learner.{name}": t for name, t in pipe.state_dict().items()}
    names = {id(p): name for name, p in pipe.named_parameters()}
    for param, slots in optimizer.state.items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{names[id(param)]}.{slot}"] = value
    return tensors


def _group_counters(optimizer: torch.optim.Optimizer) -> list[dict[str, float]]:
    """The numbers an optimizer keeps per parameter group as tensors (timm's LAMB: its
    step count), for the JSON pointer: the same on every rank, unlike its parameters."""
    return [
        {key: value.item() for key, value in group.items() if torch.is_tensor(value)}
        for group in optimizer.param_groups
    ]


def _load_state(out: Path, state: dict, pipe: Pipeline, optimizer: torch.optim.Optimizer) -> None:
    """Load this rank's learner and optimizer tensors from the checkpoint in ``out``."""
    stored = checkpoint_entries(out, state)
    wanted = {f"learner.{name}": t for name, t in pipe.state_dict().items()}
    slots: dict[int, dict[str, torch.Tensor]] = {}
    # The optimizer numbers its parameters group after group (timm's: no decay, then decay).
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    position = {id(p): i for i, p in enumerate(grouped)}
    for name, param in pipe.named_parameters():
        index = position[id(param)]
        prefix = f"optimizer.{name}."
        for key, entry in stored.items():
            if key.startswith(prefix):
                slot = key[len(prefix) :]
                tensor = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
                if tensor.dim() and tensor.shape != param.shape:
                    raise CheckpointError(
                        f"{out} does not fit this model: optimizer state {key} is "
                        f"{tuple(tensor.shape)}, the parameter {tuple(param.shape)}"
                    )
                slots.setdefault(index, {})[slot] = wanted[key] = tensor.to(param.device)
    load_tensors(out, state, wanted)
    groups = optimizer.state_dict()["param_groups"]
    counters = state.get("optimizer_groups", [])
    if not isinstance(counters, list) or not all(
        isinstance(c, dict) and all(isinstance(v, (int, float)) for v in c.values())
        for c in counters
    ):
        raise CheckpointError(f"{out / POINTER} holds malformed optimizer_groups")
    for group, numbers in zip(groups, counters):
        group.update(numbers)  # e.g. timm's LAMB counts its steps per group
    optimizer.load_state_dict({"state": slots, "param_groups": groups})


def check_same_run(state: dict, config: TrainConfig, path: Path) -> None:
    """Raise ``CheckpointError`` naming the first ``IDENTITY`` field in which the
    checkpoint ``state`` (read from ``path``) differs from ``config``.

    Example::

        check_same_run(load_checkpoint(out), config, out / "checkpoint.json")
    """
    saved = state.get("config")
    if not isinstance(saved, dict) or not isinstance(state.get("epoch"), int):
        raise CheckpointError(f"{path} is not a contsup checkpoint")
    # Runs of contsup < 0.3 had the paper's per-epoch schedule and a warm-up in epochs;
    # runs from before timm's training pieces trained as their defaults do.
    saved = _effective({**_TIMM_PIECES_OFF, "schedule": "paper", **saved})
    current = _effective(asdict(config))
    changed = [name for name in IDENTITY if saved.get(name) != current[name]]
    if changed == ["epochs"]:
        raise CheckpointError(
            f"{path} is a run of {saved['epochs']} epochs; its learning-rate schedule is set "
            f"by its length, so it cannot go on to {current['epochs']}: start a new run "
            f"(another --out) with --epochs {current['epochs']}"
        )
    if changed:
        name = changed[0]
        raise CheckpointError(
            f"{path} is from a different run: {name} was {saved.get(name)!r}, now {current[name]!r}"
        )


_TIMM_PIECES_OFF = {
    name: getattr(TrainConfig(), name)
    for name in ("optimizer", "augment", "random_erasing", "mixup", "cutmix", "label_smoothing")
}


def _effective(config: dict) -> dict:
    """A config record with the default warm-up resolved, so 10 and "a sixteenth of 160"
    compare equal."""
    epochs, warmup = config.get("epochs"), config.get("warmup_epochs")
    if warmup is None and isinstance(epochs, int):
        return {**config, "warmup_epochs": warmup_epochs(None, epochs)}
    return config


def saved_config(saved: dict, path: Path) -> TrainConfig:
    """The ``TrainConfig`` a checkpoint (read from ``path``) records; fields this
    version does not know are left out.

    Example::

        config = saved_config(load_checkpoint(out)["config"], out / "checkpoint.json")
    """
    known = {f.name for f in fields(TrainConfig)}
    # Runs that did not record their design built the default of their time, scaled.
    saved = {"aux": "scaled", **saved}
    try:
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except TypeError as error:
        raise CheckpointError(f"{path} holds a config this contsup cannot read") from error


def is_legacy(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run of contsup < 0.2 not yet converted (only a
    ``checkpoint.pt``)."""
    return not (run_dir / POINTER).exists() and (run_dir / LEGACY).exists()


def convert_legacy_run(run_dir: Path) -> None:
    """Give a run of contsup < 0.2 in ``run_dir`` today's checkpoint (its ``checkpoint.pt``
    is kept); nothing if it has one.

    Example::

        convert_legacy_run(Path("runs/old"))
        state = load_checkpoint("runs/old")

    The learner its own config builds names the old file's tensors. A trainer under
    torchrun cannot convert (one process must), so it resumes through ``resume``.
    """
    if not is_legacy(run_dir):
        return
    path = run_dir / LEGACY
    config = saved_config(read_legacy(path)["config"], path)
    learner = rebuild_learner(config, parse_dataset(config.dataset)[0], None, path)
    convert_legacy(run_dir, [name for name, _ in learner.named_parameters()])


def rebuild_learner(
    config: TrainConfig, info: DatasetInfo, cuts: list[str] | None, source: Path
) -> LocalLearner:
    """``build_learner``, with a file's description of the model that does not build
    (an unknown model or context, cuts that are not in the graph) as one sentence.

    Example::

        learner = rebuild_learner(config, info, state["cuts"], out / "checkpoint.json")
    """
    try:
        return build_learner(config, info, cuts=cuts)
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        raise CheckpointError(
            f"{source} describes a model that cannot be built: {error}"
        ) from error


def with_legacy_design(config: TrainConfig, names) -> TrainConfig:
    """``config``, with the design that built tensors ``names``: a run or export of
    contsup 0.2 whose scaled bridges hold a gain rebuilds as ``scaled-0.2``.

    Example::

        config = with_legacy_design(config, ["network.bridges.0.gain", ...])
    """
    return replace(config, aux=design_of(config.aux, names))
