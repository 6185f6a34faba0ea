"""Momentum heads across a stage boundary: the next segment's weights, sent back.

A stage's last momentum head shadows the first segment of the stage after it
(``contsup.momentum_heads``), whose weights live on another rank. That rank sends
them, as its step starts (after the caller's optimizer step), to the stage before,
which receives them once its own step is done and follows: the weights one process
averages in at the same point of the same step, so a pipeline stays bitwise one
process. Neither side waits on the other's step: the stage before reads them after
sending its carry, the stage after sends them before reading its own.

A message is one flat tensor per dtype of the segment's weights, in the order of
``MomentumHead.weights``; both sides know the shapes from the shadow itself (its
BatchNorm statistics are its own, updated by its forward on either side).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from contsup.distributed.errors import lost
from contsup.distributed.layout import Layout
from contsup.distributed.wire import Clock, receive, wait_sent
from contsup.learner import LocalLearner
from contsup.momentum_heads import MomentumHead

__all__ = ["NoShadow", "ShadowIn", "ShadowOut", "shadow_feed"]


def _dtype_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` by dtype, in first-seen order: one message each."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    return list(groups.values())


class ShadowOut:
    """Sends this stage's first segment's weights to the stage before (global rank
    ``peer``), whose last head shadows it.

    Example::

        out.send()      # as a step starts: returns at once; the next send waits for it
        out.flush()     # before the job ends
    """

    def __init__(self, head: MomentumHead, peer: int, clock: Clock):
        self.head, self.peer, self.clock = head, peer, clock
        self._sending: list = []  # works and their flat copies, alive until received

    def send(self) -> None:
        self.flush()
        values = self.head.live_values()
        try:
            self._sending = [
                (dist.isend(flat, dst=self.peer), flat)
                for flat in (
                    torch.cat([values[i].detach().reshape(-1) for i in group])
                    for group in _dtype_groups(values)
                )
            ]
        except RuntimeError as error:
            raise lost(self.peer, error) from None

    def flush(self) -> None:
        wait_sent(self._sending, self.peer, self.clock)
        self._sending = []


class ShadowIn:
    """Receives the weights of the stage after's first segment (global rank ``peer``)
    and makes this stage's last head follow them.

    Example::

        shadow_in.follow()   # once the step's units are done and its carry is sent
    """

    def __init__(self, head: MomentumHead, peer: int, clock: Clock):
        self.head, self.peer, self.clock = head, peer, clock

    def follow(self) -> None:
        shapes = self.head.weights()  # on this rank's device
        values: list[torch.Tensor | None] = [None] * len(shapes)
        for group in _dtype_groups(shapes):
            flat = torch.empty(
                sum(shapes[i].numel() for i in group),
                dtype=shapes[group[0]].dtype,
                device=shapes[group[0]].device,
            )
            receive(flat, self.peer, self.clock)
            pieces = flat.split([shapes[i].numel() for i in group])
            for i, piece in zip(group, pieces, strict=True):
                values[i] = piece.view(shapes[i].shape)
        self.head.follow(values)


class NoShadow:
    """No momentum head across this side of the stage: nothing to send or receive."""

    def send(self) -> None:
        pass

    def follow(self) -> None:
        pass

    def flush(self) -> None:
        pass


def shadow_feed(
    learner: LocalLearner, layout: Layout, clock: Clock
) -> tuple[ShadowOut | NoShadow, ShadowIn | NoShadow]:
    """What ``layout``'s stage sends back (its first segment's weights, when the stage
    before shadows it) and what it receives (for its last head, when that shadows the
    stage after's first segment).

    Example::

        out, into = shadow_feed(learner, layout, clock)
        out.send(); ...; into.follow()           # see the module docstring
    """
    heads = learner.heads
    first, last = layout.units.start, layout.units.stop
    out: ShadowOut | NoShadow = NoShadow()
    into: ShadowIn | NoShadow = NoShadow()
    if layout.previous is not None and isinstance(heads[first - 1], MomentumHead):
        out = ShadowOut(heads[first - 1], layout.previous, clock)
    if layout.next is not None and isinstance(heads[last - 1], MomentumHead):
        into = ShadowIn(heads[last - 1], layout.next, clock)
    return out, into
