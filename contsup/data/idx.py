"""IDX files, the format of MNIST and Fashion-MNIST (plain or gzip-compressed)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import torch

from contsup.data.errors import DataError

__all__ = ["IDX_IMAGES", "IDX_LABELS", "read_idx"]

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: unsigned bytes, 3 and 1 dimensions


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """One IDX file (gzip-compressed if it ends in .gz) as a uint8 tensor of its shape.

    Example::

        labels = read_idx(Path("t10k-labels-idx1-ubyte.gz"), IDX_LABELS)  # shape (10000,)

    ``magic`` is the number the file must start with: ``IDX_IMAGES`` or ``IDX_LABELS``.
    """
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {error}") from error
    # The low byte of the magic number is the number of dimensions, one int32 each.
    header = 4 * (1 + (magic & 0xFF))
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file: it does not start with magic number {magic}")
    shape = [int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4)]
    size = math.prod(shape)
    if not size or len(data) != header + size:
        raise DataError(
            f"{path} is malformed: its header promises {size} bytes of data, it holds "
            f"{len(data) - header}"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(shape)
