"""YAML recipes: a training configuration, optionally with several named runs.

A recipe's top-level keys are ``TrainConfig`` fields, plus ``description`` and an
optional ``runs`` list; each run has a ``name`` and overrides any fields::

    description: Table 1, ResNet-32, K=16, CIFAR-10
    model: resnet32
    k: 16
    dataset: cifar10
    runs:
      - {name: R0, context: R0}
      - {name: R1E, context: R1E}
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from contsup.config import TrainConfig
from contsup.errors import ContsupError

__all__ = ["RecipeError", "Recipe", "load_recipe", "check_fields", "given_fields", "runs_to_train"]


class RecipeError(ContsupError):
    """A recipe file that cannot be used; the message names the file and the field."""


class Recipe(typing.NamedTuple):
    description: str
    base: dict[str, Any]
    runs: list[tuple[str, dict[str, Any]]]  # (name, overrides); one unnamed run if none


_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _accepts(annotation: str, value: Any) -> bool:
    """Does ``value`` fit a TrainConfig field annotation (written as a string)?"""
    # TrainConfig annotations are strings (postponed evaluation); they are our own code.
    hint = eval(annotation, {"list": list, "dict": dict, "Any": Any})
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return all(_accepts(item.__name__, v) for v in value)
        if origin in (str, bool, dict) and isinstance(value, origin):
            return True
    return False


def check_fields(values: dict[str, Any], where: str) -> None:
    """Raise RecipeError naming the first unknown or mistyped field."""
    for name, value in values.items():
        if name not in _TYPES:
            close = difflib.get_close_matches(name, list(_TYPES), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{where}: unknown field '{name}'{hint}")
        if not _accepts(_TYPES[name], value):
            # YAML reads a bare off, no or yes as a bool: a string field wants it quoted.
            bool_read = isinstance(value, bool)
            quote = " (quote it: YAML reads a bare off or on as a bool)" if bool_read else ""
            raise RecipeError(
                f"{where}: field '{name}' must be {_TYPES[name]}, got {value!r}{quote}"
            )


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Example::

        recipe = load_recipe("recipes/t1_resnet32_k16.yaml")
        [name for name, _ in recipe.runs]
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise RecipeError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of fields, got {type(data).__name__}")
    description = data.pop("description", "")
    runs = data.pop("runs", None)
    check_fields(data, str(path))
    if runs is None:
        return Recipe(description, data, [("", {})])
    if not isinstance(runs, list) or not runs:
        raise RecipeError(f"{path}: field 'runs' must be a non-empty list of mappings")
    named = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str):
            raise RecipeError(f"{path}: runs[{i}] must be a mapping with a 'name'")
        overrides = {k: v for k, v in run.items() if k != "name"}
        check_fields(overrides, f"{path}: runs[{i}] ({run['name']})")
        named.append((run["name"], overrides))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise RecipeError(f"{path}: run names must be unique")
    return Recipe(description, data, named)


def given_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields a command line gave (None: not given), as a recipe writes them.

    Example::

        >>> given_fields({"model": "resnet20", "k": None, "cuts": "a, b", "plan": None})
        {'model': 'resnet20', 'cuts': ['a', 'b'], 'plan': None}

    Cuts arrive comma-separated; cuts and a plan each replace the other's recipe value.
    """
    given = {name: value for name, value in options.items() if value is not None}
    if options.get("cuts") is not None:
        cuts = options["cuts"]
        given.update(cuts=[c.strip() for c in cuts.split(",") if c.strip()], plan=None)
    if options.get("plan") is not None:
        given["cuts"] = None
    return given


def runs_to_train(
    recipe: str | Path | None, run: str | None, given: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """(name, TrainConfig fields) of each run to train: the recipe's base, then the run's
    overrides, then ``given``; one unnamed run of ``given`` alone without a recipe.

    Example::

        runs_to_train("recipes/digits.yaml", None, {"epochs": 1})  # [("", {..., "epochs": 1})]

    ``run`` keeps only the run of that name. A named run trains in its own directory,
    ``out/<name>``, where ``out`` defaults to ``runs/<recipe name>``.
    """
    book = load_recipe(recipe) if recipe else None
    runs = book.runs if book else [("", {})]
    if run is not None:
        runs = [r for r in runs if r[0] == run]
        if not runs:
            names = ", ".join(n for n, _ in book.runs) if book else "none without --recipe"
            raise RecipeError(f"no run named {run!r}; runs: {names}")
    check_fields(given, "command line")
    merged = []
    for name, overrides in runs:
        values = {**(book.base if book else {}), **overrides, **given}
        if book and name:
            values["out"] = str(Path(values.get("out") or Path("runs") / Path(recipe).stem) / name)
        merged.append((name, values))
    return merged
