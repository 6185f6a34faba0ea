"""Plan files: what ``Partition.to_json`` writes and ``read_plan`` reads back.

A plan is data only (never code): the cuts, the objective and the input it was
made for, so ``Partition.from_json`` can re-apply it to a fresh model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from partitioner.errors import PartitionError

__all__ = ["PLAN_VERSION", "SavedPlan", "read_plan"]

PLAN_VERSION = 1


@dataclass(frozen=True)
class SavedPlan:
    """What a plan file (``Partition.to_json``) says: where to cut, and for what input.

    ``model`` is the model name ``contsup split --save`` records, or None.
    """

    cuts: list[tuple[str, ...]]
    objective: str
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    model: str | None


def read_plan(text: str) -> SavedPlan:
    """Parse a plan's JSON (data only, never code); ``PartitionError`` if it is not one.

    Example::

        plan = read_plan(Path("plan.json").read_text())
        plan.cuts, plan.input_shape
    """
    try:
        data = json.loads(text)
        return SavedPlan(
            cuts=[tuple(c) for c in data["cuts"]],
            objective=data["objective"],
            input_shape=tuple(data["input_shape"]),
            input_dtype=getattr(torch, data["input_dtype"].removeprefix("torch.")),
            model=data.get("model"),
        )
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise PartitionError(f"not a partition plan ({type(error).__name__}: {error})") from error
