"""Saved runs, opened again: evaluate them, export their inference model, load it back.

A run directory (``contsup train --out``) holds ``checkpoint.json`` and the
checkpoint's tensors (``contsup.checkpoint``). ``open_run`` rebuilds the learner
it trained, at the cuts it trained with, and loads its weights. ``export_run``
writes the inference model (segments and bridges; no heads) as safetensors,
ONNX or a ``torch.export`` program; ``load`` rebuilds a model from safetensors.
By default an exported model takes images in [0, 1] and normalises them itself
(``RawImageNetwork``), so its users need not know the training data's mean and std.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from contsup.atomic import write_atomic
from contsup.building import cut_nodes
from contsup.checkpoint import (
    POINTER,
    CheckpointError,
    checkpoint_entries,
    load_checkpoint,
    load_tensors,
)
from contsup.checkpoint_manager import (
    convert_legacy_run,
    rebuild_learner,
    saved_config,
    with_legacy_design,
)
from contsup.config import REBUILD, TrainConfig
from contsup.data import DatasetInfo, info_from_record, info_record, parse_dataset
from contsup.errors import ContsupError
from contsup.learner import ContextNetwork, LocalLearner

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "RawImageNetwork",
    "Run",
    "export_run",
    "load",
    "open_run",
    "with_legacy_design",
]

EXPORT_FORMATS = ("safetensors", "onnx", "pt2")
SAFETENSORS_VERSION = 1
# What the exported model takes, in the safetensors header's "input" field. Files of
# contsup 0.2 have no such field: their model takes normalised images.
RAW, NORMALIZED = "raw", "normalized"


class ExportError(ContsupError):
    """An export that cannot be written, or a file that cannot be loaded back."""


class RawImageNetwork(nn.Module):
    """The inference model for images in [0, 1]: normalises them as training did, then runs
    the ``ContextNetwork``.

    Example::

        net = RawImageNetwork(learner.export(), info.mean, info.std)
        logits = net(images)   # images in [0, 1], shape (N, C, H, W)

    ``net.network`` is the bare model, which takes normalised images.
    """

    def __init__(self, network: ContextNetwork, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The data loader's arithmetic in its order, so the logits are training's, bitwise.
        return self.network((images - self.mean) / self.std)


@dataclass
class Run:
    """A run directory opened: its config, its checkpoint state, the learner with its weights."""

    path: Path
    config: TrainConfig
    state: dict
    learner: LocalLearner
    info: DatasetInfo


def _info(state: dict, config: TrainConfig) -> DatasetInfo:
    """The data's shape and normalisation, from the checkpoint (or, for older ones, the name)."""
    if "data" not in state:  # written before checkpoints recorded it
        return parse_dataset(config.dataset)[0]
    try:
        return info_from_record(state["data"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError("the checkpoint's data record is malformed") from error


def open_run(run_dir: str | Path, *, best: bool = False) -> Run:
    """The learner a run trained, with its last (or ``best``) checkpoint's weights, on the CPU.

    Example::

        run = open_run("runs/resnet20-k4-E-digits")
        run.learner.eval()(x), run.state["epoch"], run.state["metrics"][-1]

    A checkpoint of contsup < 0.2 (``checkpoint.pt``) is converted first (read
    with ``weights_only=True``). Raises ``CheckpointError`` when there is no
    checkpoint, or it is corrupt.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a run directory")
    convert_legacy_run(path)
    state = load_checkpoint(path, best=best)
    config = saved_config(state.get("config") or {}, path / POINTER)
    config = with_legacy_design(config, checkpoint_entries(path, state))
    info = _info(state, config)
    learner = rebuild_learner(config, info, state.get("cuts"), path / POINTER)
    tensors = {f"learner.{name}": t for name, t in learner.state_dict().items()}
    load_tensors(path, state, tensors)
    return Run(path, config, state, learner, info)


def _write_new(out: Path, force: bool, write) -> None:
    """``write(tmp_path)``, then move it to ``out``: all or nothing, never over a file
    without ``force``."""
    if out.exists() and not force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    write_atomic(out, write, suffix=f".tmp{out.suffix}")  # torch.export.save checks the suffix


def _recipe(run: Run, raw_input: bool) -> dict:
    """What ``load`` needs to rebuild the inference model: no data, no plan file."""
    return {
        "format": SAFETENSORS_VERSION,
        **{name: getattr(run.config, name) for name in REBUILD},
        "cuts": cut_nodes(run.learner),
        "data": info_record(run.info),
        "input": RAW if raw_input else NORMALIZED,
    }


def export_run(
    run: Run, fmt: str, out: str | Path, *, force: bool = False, raw_input: bool = True
) -> Path:
    """Write ``run``'s inference model (segments and bridges) to ``out`` as ``fmt``.

    Example::

        export_run(open_run("runs/x"), "onnx", "model.onnx")
        export_run(open_run("runs/x"), "safetensors", "model.safetensors")
        net = contsup.load("model.safetensors")

    Formats: ``safetensors`` (the state dict, plus what ``load`` needs to rebuild
    the model), ``onnx`` (``torch.onnx.export``'s dynamo exporter, batch size
    dynamic; needs ``pip install 'contsup[onnx]'``) and ``pt2`` (``torch.export``).

    The model takes images in [0, 1] and normalises them with the training data's
    mean and std (``RawImageNetwork``); with ``raw_input=False``, the bare network,
    which takes normalised images as in training. safetensors holds the bare
    network's weights either way, and its header tells ``load`` which to rebuild.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    bare = run.learner.export().eval()
    net = RawImageNetwork(bare, run.info.mean, run.info.std).eval() if raw_input else bare
    example = torch.zeros(2, *run.info.image_size)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = {name: t.contiguous() for name, t in bare.state_dict().items()}
        metadata = {"contsup": json.dumps(_recipe(run, raw_input))}
        _write_new(out, force, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    elif fmt == "pt2":
        program = _exported_program(net, example)
        _write_new(out, force, lambda tmp: torch.export.save(program, str(tmp)))
    else:
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ExportError(
                "--format onnx needs the onnx and onnxscript packages: pip install 'contsup[onnx]'"
            ) from None

        def write_onnx(tmp: Path) -> None:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=False,
            )

        _write_new(out, force, write_onnx)
    return out


def _exported_program(net: nn.Module, example: torch.Tensor):
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(net, (example,), dynamic_shapes=({0: batch},))


def load(path: str | Path, *, raw_input: bool | None = None) -> nn.Module:
    """The inference model in a safetensors file that ``contsup export`` wrote, in eval mode.

    Example::

        net = contsup.load("model.safetensors")
        logits = net(images)    # images in [0, 1], as exported by default
        bare = contsup.load("model.safetensors", raw_input=False)
        logits = bare(x)        # x normalised like the training data

    ``raw_input`` chooses what the model takes: ``True``, images in [0, 1] (a
    ``RawImageNetwork``, which normalises them with the mean and std in the file);
    ``False``, normalised images (the bare ``ContextNetwork``); ``None``, what
    ``contsup export`` chose, which is ``True`` unless it was given
    ``--normalized-input``; for a file of contsup 0.2, which does not say, ``False``.

    Nothing in the file is executed: safetensors holds tensors and a JSON header.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as file:
            recipe = json.loads((file.metadata() or {})["contsup"])
        tensors = load_file(str(path))
    except (OSError, KeyError, ValueError) as error:
        raise ExportError(f"{path} is not a model that `contsup export` wrote") from error
    except Exception as error:  # safetensors' own errors for a corrupt file
        raise ExportError(f"cannot read {path}: {error}") from error
    if not isinstance(recipe, dict) or recipe.get("format") != SAFETENSORS_VERSION:
        raise ExportError(f"{path} is not in export format {SAFETENSORS_VERSION}")
    try:
        config = TrainConfig(**{name: recipe[name] for name in REBUILD})
        config = with_legacy_design(config, tensors)
        info = info_from_record(recipe["data"])
        cuts = [str(node) for node in recipe["cuts"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(f"{path} does not say which model it holds") from error
    exported = recipe.get("input", NORMALIZED)
    if exported not in (RAW, NORMALIZED):
        raise ExportError(
            f"{path} says its model takes {exported!r} input; expected raw or normalized"
        )
    try:
        net = rebuild_learner(config, info, cuts, path).export()
    except CheckpointError as error:
        raise ExportError(str(error)) from error
    try:
        net.load_state_dict(tensors)
    except RuntimeError as error:
        raise ExportError(f"{path} does not fit the model it names: {error}") from error
    if raw_input is None:
        raw_input = exported == RAW
    return (RawImageNetwork(net, info.mean, info.std) if raw_input else net).eval()
