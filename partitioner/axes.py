"""Axis rules: how an op hands the roles of its operands' axes on to its result.

The pure part of ``partitioner.layout``: functions of roles and sizes only, no
graph. ``layout`` picks the rule for each node and names the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Axes", "agree", "agreed", "broadcast", "moved", "regroup"]

Axes = tuple[str, ...]
"""One role per axis: batch ``N``, channels ``C``, a part of the channels ``c``
(attention heads), space ``S``, a size-1 axis with no role ``1``, or unknown ``?``."""


def broadcast(operands: list[tuple[Axes, tuple[int, ...]]], out: tuple[int, ...]) -> Axes:
    """Axes of a result of shape ``out`` that ``operands`` ``(axes, shape)`` broadcast to.

    Example::

        >>> broadcast([(("N", "C", "S", "S"), (2, 8, 4, 4)), (("N", "C", "1", "1"), (2, 8, 1, 1))],
        ...           (2, 8, 4, 4))
        ('N', 'C', 'S', 'S')
    """
    result = []
    for i, size in enumerate(out):
        roles = []
        for a, shape in operands:
            j = i - (len(out) - len(shape))  # operands broadcast from the right
            # An operand broadcast along this axis says nothing about it.
            if j >= 0 and shape[j] == size:
                roles.append(a[j])
        result.append(agree(roles))
    return tuple(result)


def agree(roles: Sequence[str]) -> str:
    """The one role several operands give an axis: unknown ``?`` when they disagree.

    Example::

        >>> agree(["C", "1", "C"]), agree(["C", "S"]), agree(["1", "1"])
        ('C', '?', '1')
    """
    known = {r for r in roles if r not in ("?", "1")}
    if len(known) == 1:
        return known.pop()
    if known or "?" in roles or not roles:
        return "?"
    return "1"


def agreed(operands: list[Axes]) -> Axes | None:
    """Axes of a concatenation: each axis as the operands agree on it.

    Example::

        >>> agreed([("N", "C", "S"), ("N", "S", "?")])
        ('N', '?', 'S')
    """
    if not operands or len({len(a) for a in operands}) != 1:
        return None
    return tuple(agree(roles) for roles in zip(*operands))


def moved(name: str, source: Any, args: list[int]) -> Axes | None:
    """Axes after ``permute``, ``transpose``/``swapaxes``/``swapdims`` or ``movedim``.

    Example::

        >>> moved("permute", ("N", "C", "S", "S"), [0, 2, 3, 1])
        ('N', 'S', 'S', 'C')
    """
    if not isinstance(source, tuple) or len(args) < (1 if name == "permute" else 2):
        return None
    n = len(source)
    order = list(range(n))
    if name == "permute":
        order = [a % n for a in args]
    elif name == "movedim":
        order.insert(args[1] % n, order.pop(args[0] % n))
    else:
        a, b = args[0] % n, args[1] % n
        order[a], order[b] = order[b], order[a]
    return tuple(source[i] for i in order) if sorted(order) == list(range(n)) else None


def regroup(source: Any, old: tuple[int, ...], new: tuple[int, ...]) -> Axes | None:
    """Axes after a reshape from ``old`` to ``new``: groups of axes with equal products.

    Example::

        >>> regroup(("N", "S", "C"), (2, 49, 96), (2, 7, 7, 96))
        ('N', 'S', 'S', 'C')
        >>> regroup(("N", "S", "S", "S", "S", "C"), (2, 2, 2, 7, 7, 96), (8, 7, 7, 96))
        ('?', 'S', 'S', 'C')
    """
    if not isinstance(source, tuple) or 0 in old or math.prod(old) != math.prod(new):
        return None
    result: list[str] = []
    i = j = 0
    while i < len(old) and j < len(new):
        if old[i] == new[j]:  # an axis that survives keeps its role, even at size 1
            result.append(source[i])
            i, j = i + 1, j + 1
            continue
        i0, j0, a, b = i, j, old[i], new[j]
        i, j = i + 1, j + 1
        while a != b:  # equal products end the group before either shape runs out
            if a < b:
                a, i = a * old[i], i + 1
            else:
                b, j = b * new[j], j + 1
        result += _group(source[i0:i], old[i0:i], new[j0:j])
    return (*result, *("1" * (len(new) - j)))


def _group(roles: Axes, old: tuple[int, ...], new: tuple[int, ...]) -> list[str]:
    """Roles of the axes ``new`` that a reshape makes of the axes ``old``."""
    # A size-1 axis is dropped unless it is the batch or channels (a batch of one).
    kept = [r for r, size in zip(roles, old) if size != 1 or r in ("N", "C")]
    targets = [k for k, size in enumerate(new) if size != 1]
    if kept and set(kept) == {"S"}:
        role = "S"
    elif len(targets) > 1:
        role = "c" if kept in (["C"], ["c"]) else "?"  # channels split into heads
    elif len(kept) == 1:
        role = kept[0]
    elif kept and set(kept) <= {"C", "c"}:
        role = "C"  # heads merged back
    elif sorted(kept) == ["C", *("S" * (len(kept) - 1))]:
        role = "C"  # space folded into channels (patch merging, flatten(1))
    else:
        role = "?"
    return [role if k in targets else "1" for k in range(len(new))]
