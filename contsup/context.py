"""Context-supply modes: which earlier tensors feed each boundary.

``R0`` is plain greedy local learning. ``E`` adds the raw image, ``Rn`` the n most
recent earlier boundary inputs, and ``RnE`` both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from contsup.errors import ConfigError

__all__ = ["ContextMode", "gather_sources", "parse_context", "recent_sources"]

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
        raise ConfigError(
            f"unknown context mode {mode!r}; use R0 (none), E (the image), Rn (the n most "
            "recent boundaries, n >= 1) or RnE (both), e.g. R1E"
        )
    if mode.strip() == "E":
        return ContextMode(0, True)
    return ContextMode(int(match.group(1)), bool(match.group(2)))


def recent_sources(boundary: int, mode: ContextMode) -> list[int]:
    """Which earlier boundary inputs boundary ``boundary`` reads, most recent first.

    Example::

        >>> R2, R2E = ContextMode(2, False), ContextMode(2, True)
        >>> recent_sources(3, R2), recent_sources(0, R2), recent_sources(0, R2E)
        ([2, 1], [-1], [])

    Index -1 is the image (the first segment's input); it stands in for every
    boundary that does not exist yet and is read once. With ``E`` the image has
    its own encoder, so it does not also stand in (the reference's R1E applies
    E alone at the first boundary).
    """
    indices = [max(boundary - 1 - j, -1) for j in range(mode.recent)]
    return [i for i in dict.fromkeys(indices) if i >= 0 or not mode.image]


def gather_sources(k: int, mode: ContextMode, inputs: Sequence, image):
    """The values boundary ``k`` reads: ``inputs[i]``, or ``image`` for i < 0.

    Example::

        >>> gather_sources(2, ContextMode(2, True), ["h0", "h1"], "x")
        ['h1', 'h0']

    Works on tensors and on shape descriptions alike (``wrap`` passes geometries).
    """
    return [image if i < 0 else inputs[i] for i in recent_sources(k, mode)]
