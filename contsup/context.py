"""Context-supply modes: which earlier tensors feed each boundary.

``R0`` is plain greedy local learning. ``E`` adds the raw image, ``Rn`` the n most
recent earlier boundary inputs, and ``RnE`` both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ContextMode", "parse_context"]

_PATTERN = re.compile(r"R(\d+)(E?)|E")


@dataclass(frozen=True)
class ContextMode:
    """``recent``: how many earlier boundary inputs; ``image``: whether the raw image."""

    recent: int
    image: bool

    def __str__(self) -> str:
        if self.recent == 0:
            return "E" if self.image else "R0"
        return f"R{self.recent}{'E' if self.image else ''}"


def parse_context(mode: str | ContextMode) -> ContextMode:
    """Parse a context-supply mode string.

    Example::

        >>> parse_context("R1E")
        ContextMode(recent=1, image=True)
        >>> str(parse_context("E"))
        'E'

    Accepted: ``R0``, ``E``, ``Rn`` and ``RnE`` for any n >= 1.
    """
    if isinstance(mode, ContextMode):
        return mode
    match = _PATTERN.fullmatch(mode.strip()) if isinstance(mode, str) else None
    if match is None or (match.group(1) == "0" and match.group(2)):
        raise ValueError(
            f"unknown context mode {mode!r}; use R0 (none), E (the image), Rn (the n most "
            "recent boundaries, n >= 1) or RnE (both), e.g. R1E"
        )
    if mode.strip() == "E":
        return ContextMode(0, True)
    return ContextMode(int(match.group(1)), bool(match.group(2)))
