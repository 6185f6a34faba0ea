"""``torch.compile`` one function per unit: what ``LocalLearner.compile_units`` builds.

A unit's training step (bridge, segment, head, local loss) is one graph, so the
compiler can fuse a head's or a bridge's small ops with each other and with the
segment's last ones. Dynamo keeps compiled graphs per code object and recompiles
at most ``recompile_limit`` (8) times per code object before it falls back to
eager: K units sharing one function would leave every unit after the eighth
uncompiled. Each unit's function therefore gets a code object of its own.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

__all__ = ["compile_each"]


def _own_code(fn: types.FunctionType, name: str) -> types.FunctionType:
    """``fn`` with a copy of its code object named ``name``: a cache of its own for dynamo."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def compile_each(functions: list[types.FunctionType], **options) -> list[Callable]:
    """``torch.compile(f, **options)`` of each function, each with its own compile cache.

    Example::

        steps = compile_each([make_step(j) for j in range(k)], mode="max-autotune")
        loss = steps[2](x, y)          # compiled on first call, then reused

    The functions must be plain Python functions (closures are fine), not partials
    or bound methods: ``torch.compile`` wraps those in one shared function.
    """
    return [
        torch.compile(_own_code(f, f"unit_{j}_step"), **options) for j, f in enumerate(functions)
    ]
