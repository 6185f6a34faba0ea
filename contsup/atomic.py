"""Atomic writes: a crash at any moment leaves the old file or the new one, never half.

Each write goes to a temporary file in the same directory, is flushed to disk,
and is renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "write_text_atomic"]


def write_atomic(path: str | Path, write: Callable[[Path], None], *, suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    Example::

        write_atomic("model.pt2", lambda tmp: torch.export.save(program, tmp), suffix=".tmp.pt2")

    ``suffix`` ends the temporary name: writers that check the file's extension
    (``torch.export.save``) need the target's. The file gets the permissions
    ``open()`` would have given it, not ``mkstemp``'s owner-only ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(Path(tmp))
        with open(tmp, "rb+") as f:  # on disk before the rename makes it the file
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
    write_atomic(path, lambda tmp: tmp.write_bytes(text.encode()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
