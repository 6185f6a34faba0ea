"""Atomic writes: a crash at any moment leaves the old file or the new one, never half.

Each write goes to a temporary file in the same directory, is flushed to disk,
and is renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from contsup.errors import ContsupError

__all__ = ["CheckpointError", "write_text_atomic", "save_atomic", "load_checkpoint"]


class CheckpointError(ContsupError):
    """A checkpoint that cannot be read or does not match the run."""


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically.

    Example::

        write_text_atomic("plan.json", part.to_json())
    """
    _write_atomic(Path(path), lambda f: f.write(text.encode()))


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a truncated file behind.

    Example::

        save_atomic({"model": learner.state_dict()}, "run/checkpoint.pt")
    """
    _write_atomic(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by ``save_atomic``; unreadable files raise CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}") from error
    if not isinstance(state, dict) or "version" not in state:
        raise CheckpointError(f"{path} is not a contsup checkpoint")
    return state
