"""Keep freed CPU memory in the process, so large tensors stop costing page faults.

glibc's malloc serves each block above its mmap threshold (at most 32 MiB) with
a fresh ``mmap`` and gives it back to the kernel when it is freed. A training
step at 224 px allocates and frees activations of 25-100 MiB, so every step
faults them in again, page by page, and the kernel zeroes each page. On
mobilenetv3_large_100 (batch 32, 224 px, this project's 2-core CPU) 40% of a
benchmark's time went to the kernel (52 of 119 s), and each configuration's
steps took 1.5-2x longer, and varied 2-3x more, than with the memory kept
(``docs/benchmarks.md``).

``keep_freed_memory`` tells malloc to serve every block from its heap and to
keep freed memory for reuse: the process's resident memory stays at its
high-water mark, as with CUDA's caching allocator. The command line calls it
once at start; scripts and notebooks may call it themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_AT_MOST = 2**31 - 1  # bytes of free heap top kept before malloc trims it (int max)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; False where there is no glibc.

    Example::

        from contsup.cpu_allocator import keep_freed_memory
        keep_freed_memory()  # before training on the CPU

    Applies to the whole process from the next allocation on; nothing to undo in a
    process that trains.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)  # musl has none
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_AT_MOST))
