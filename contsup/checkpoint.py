"""Atomic files and run checkpoints that load without running code.

A run's checkpoint is two things in its run directory:

- ``checkpoint-eNNNN/``: every tensor (parameters, buffers, optimizer state),
  written with ``torch.distributed.checkpoint`` (DCP) under the names of one
  single-process ``state_dict``, so a run saved by any number of pipeline stages
  and data-parallel replicas loads into any other;
- ``checkpoint.json``: epoch, config, metrics and random state, and which
  directory holds the tensors. It is replaced atomically once the tensors are on
  disk, so a crash while saving leaves the previous checkpoint in force.

Loading trusts nothing in the files: DCP's ``.metadata`` pickle is read by an
unpickler that builds only DCP's own record types, every entry must be a tensor,
and the tensors themselves are read with ``weights_only=True``.
"""

from __future__ import annotations

import base64
import json
import pickle
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from contsup.atomic import write_text_atomic
from contsup.distributed.errors import lost, only_peer
from contsup.errors import ContsupError

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "checkpoint_entries",
    "load_checkpoint",
    "load_tensors",
    "convert_legacy",
    "read_legacy",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "tensors_dir",
]

CHECKPOINT_VERSION = 2
POINTER = "checkpoint.json"
LEGACY = "checkpoint.pt"  # contsup < 0.2: one torch.save pickle


class CheckpointError(ContsupError):
    """A checkpoint that cannot be read or does not match the run."""


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def _single_process_quiet():
    """DCP warns that it assumes one process when torch.distributed is not set up:
    that is what a single-process run wants."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if _distributed():
        try:
            torch.distributed.barrier()
        except RuntimeError as error:  # gloo: a peer stopped, maybe after the commit
            raise lost(only_peer(), error) from None


def tensors_dir(epoch: int, step: int | None = None) -> str:
    """The name of the directory that holds epoch ``epoch``'s tensors (with ``step``: those
    of a checkpoint written after that step of the epoch).

    Example::

        >>> tensors_dir(3), tensors_dir(4, 120)
        ('checkpoint-e0003', 'checkpoint-e0004-s000120')
    """
    return f"checkpoint-e{epoch:04d}" + ("" if step is None else f"-s{step:06d}")


def save_checkpoint(
    run_dir: str | Path,
    tensors: dict[str, torch.Tensor],
    state: dict,
    keep: tuple[str, ...] = (),
    *,
    name: str | None = None,
) -> None:
    """Write ``tensors`` with DCP, then commit ``state`` (JSON) as the run's checkpoint.

    Example::

        save_checkpoint("runs/x", {"learner.heads.0.weight": w}, {"epoch": 3, "metrics": []})

    The tensors go to ``name`` (default: ``tensors_dir(state["epoch"])``). Then it
    deletes earlier checkpoints' tensors, except the directories in ``keep`` (the
    trainer keeps its best epoch's). Collective when ``torch.distributed``
    is initialised: every rank passes the tensors it holds (replicas may repeat a
    name; one copy is written). The run directory must be visible to all ranks
    (one machine, or a shared filesystem).
    """
    run_dir = Path(run_dir)
    name = name or tensors_dir(state["epoch"])
    coordinator = not _distributed() or torch.distributed.get_rank() == 0
    if coordinator:  # left over from a save that crashed before its commit
        shutil.rmtree(run_dir / name, ignore_errors=True)
    _barrier()
    with _single_process_quiet():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(run_dir / name))
    if coordinator:
        payload = {"version": CHECKPOINT_VERSION, "tensors": name, **state}
        write_text_atomic(run_dir / POINTER, json.dumps(payload))
        for old in run_dir.glob("checkpoint-e*"):
            if old.name != name and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()


def load_checkpoint(run_dir: str | Path, *, best: bool = False) -> dict:
    """The committed state (``checkpoint.json``) of the run in ``run_dir``.

    Example::

        state = load_checkpoint("runs/x")
        state["epoch"], state["metrics"][-1]

    With ``best``, ``epoch`` and ``tensors`` are the best epoch's (highest test
    accuracy) instead of the last's. Raises ``CheckpointError`` when there is
    none, it is unreadable, or it is an older contsup's pickle (never unpickled:
    a pickle can run code).
    """
    run_dir = Path(run_dir)
    path = run_dir / POINTER
    if not path.exists():
        if (run_dir / LEGACY).exists():
            raise CheckpointError(
                f"{run_dir / LEGACY} is a checkpoint of contsup < 0.2; `contsup eval "
                f"{run_dir}` or `contsup train ... --resume` converts it (tensors only)"
            )
        raise CheckpointError(f"no checkpoint in {run_dir}")
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}") from error
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a contsup checkpoint")
    if best:
        chosen = state.get("best")
        if not isinstance(chosen, dict):
            raise CheckpointError(
                f"{path} keeps no best epoch (none has ended yet, or contsup < 0.2 wrote it)"
            )
        state = {**state, "epoch": chosen.get("epoch"), "tensors": chosen.get("tensors")}
    name = state.get("tensors")
    if not isinstance(name, str) or Path(name).name != name or not (run_dir / name).is_dir():
        raise CheckpointError(f"{path} names tensors that are not in {run_dir}")
    return state


def checkpoint_entries(run_dir: str | Path, state: dict) -> dict[str, TensorStorageMetadata]:
    """The checkpoint's tensors by name: each entry's ``size`` and ``properties.dtype``.

    Example::

        entries = checkpoint_entries("runs/x", load_checkpoint("runs/x"))
        sorted(entries)[:2]     # ['learner.heads.0.0.bias', 'learner.heads.0.0.weight']
    """
    folder = Path(run_dir) / state["tensors"]
    return _SafeReader(folder).checked_metadata().state_dict_metadata


def load_tensors(run_dir: str | Path, state: dict, wanted: dict[str, torch.Tensor]) -> None:
    """Fill ``wanted`` in place with the checkpoint's tensors of the same names.

    Example::

        tensors = {name: p.detach() for name, p in learner.state_dict().items()}
        load_tensors("runs/x", load_checkpoint("runs/x"), tensors)

    Every name must be in the checkpoint with the same shape; anything else raises
    ``CheckpointError``. Collective when ``torch.distributed`` is initialised.
    """
    folder = Path(run_dir) / state["tensors"]
    reader = _SafeReader(folder)
    stored = reader.checked_metadata().state_dict_metadata
    for name, tensor in wanted.items():
        entry = stored.get(name)
        if entry is None:
            raise CheckpointError(f"{folder} does not fit this model: it has no {name}")
        if tuple(entry.size) != tuple(tensor.shape):
            raise CheckpointError(
                f"{folder} does not fit this model: {name} is {tuple(entry.size)} there, "
                f"{tuple(tensor.shape)} here"
            )
    try:
        with _single_process_quiet():
            dcp.load(wanted, storage_reader=reader)
    except (Exception, CheckpointException) as error:  # DCP's is a BaseException
        # DCP's message carries every rank's traceback; its last line names the cause.
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise CheckpointError(
            f"cannot read checkpoint {folder}: a tensor file is damaged or cut short ({lines[-1]})"
        ) from error


def _encode(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode()


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def rng_state(generator: torch.Generator) -> dict:
    """Random state as JSON: torch's, Python's and ``generator``'s (and CUDA's).

    Example::

        state = rng_state(generator)   # into checkpoint.json
        set_rng_state(state, generator)
    """
    return _rng_json(
        torch.get_rng_state(),
        random.getstate(),
        generator.get_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )


def _rng_json(torch_state, python_state, data_state, cuda_states) -> dict:
    version, numbers, gauss = python_state
    state = {
        "torch": _encode(torch_state),
        "python": [version, list(numbers), gauss],
        "data": _encode(data_state),
    }
    if cuda_states is not None:
        state["cuda"] = [_encode(s) for s in cuda_states]
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what ``rng_state`` recorded; ``CheckpointError`` if it is malformed."""
    try:
        torch.set_rng_state(_decode(state["torch"]))
        version, numbers, gauss = state["python"]
        random.setstate((version, tuple(numbers), gauss))
        generator.set_state(_decode(state["data"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_decode(s) for s in state["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"a checkpoint's random state is malformed: {error}") from error


def read_legacy(path: str | Path) -> dict:
    """An older contsup's ``checkpoint.pt``, read with ``weights_only=True``: tensors,
    numbers, strings, lists, tuples and dicts only. A pickle that would build
    anything else (and so could run code) raises ``CheckpointError`` unread."""
    try:
        old = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} was not loaded: it holds more than tensors and numbers, and unpickling "
            "it could run code"
        ) from error
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}") from error
    if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
        raise CheckpointError(f"{path} is not a contsup checkpoint")
    return old


def convert_legacy(run_dir: str | Path, parameter_names: list[str]) -> None:
    """Rewrite an older contsup's ``checkpoint.pt`` as a checkpoint of this one.

    Example::

        convert_legacy("runs/old", [name for name, _ in learner.named_parameters()])

    The pickle is read with ``weights_only=True``: tensors, numbers, strings,
    lists, tuples and dicts only, so a file that would run code is refused
    (``CheckpointError``) and the code never runs. ``parameter_names`` are the
    learner's parameters in the order its optimizer had them. ``checkpoint.pt``
    itself is kept.
    """
    path = Path(run_dir) / LEGACY
    old = read_legacy(path)
    try:
        tensors = {f"learner.{name}": t for name, t in old["learner"].items()}
        for index, slots in old["optimizer"]["state"].items():
            for slot, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{parameter_names[index]}.{slot}"] = value
        rng = old["rng"]
        state = {
            "config": old["config"],
            "epoch": int(old["epoch"]),
            "metrics": old["metrics"],
            "rng": _rng_json(rng["torch"], rng["python"], rng["data"], rng.get("cuda")),
        }
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a contsup checkpoint") from error
    save_checkpoint(run_dir, tensors, state)


# What DCP's .metadata pickle may build: its own records, dtypes, sizes and paths.
_METADATA_TYPES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a lookup among torch's layouts
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = name in _METADATA_TYPES.get(module, ())
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP checkpoint")
        return super().find_class(module, name)


class _SafeReader(dcp.FileSystemReader):
    """A DCP ``FileSystemReader`` whose metadata is checked before anything uses it."""

    def checked_metadata(self) -> Metadata:
        folder = Path(self.path)
        try:
            with open(folder / ".metadata", "rb") as file:
                metadata = _MetadataUnpickler(file).load()
        except Exception as error:
            raise CheckpointError(f"cannot read checkpoint {folder}: {error}") from error
        entries = getattr(metadata, "state_dict_metadata", None)
        if not isinstance(metadata, Metadata) or not isinstance(entries, dict):
            raise CheckpointError(f"{folder / '.metadata'} is not DCP metadata")
        bad = [name for name, e in entries.items() if not isinstance(e, TensorStorageMetadata)]
        if bad:
            raise CheckpointError(f"{folder} holds non-tensor entries such as {bad[0]}")
        for info in (metadata.storage_data or {}).values():
            relative = str(getattr(info, "relative_path", ""))
            if Path(relative).name != relative:
                raise CheckpointError(f"{folder} points outside itself: {relative}")
        return metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = self.checked_metadata()
        if getattr(metadata, "storage_meta", None) is not None and hasattr(self, "load_id"):
            metadata.storage_meta.load_id = self.load_id
        return metadata
