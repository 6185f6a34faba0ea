"""The carry between stages, point to point: segment ``b-1``'s output and the window
of earlier boundary inputs that ``Rn`` bridges further down read, with the part of
the batch later stages read (the labels, and the images where a later unit reads
them: ``contsup.distributed.feed``).

A message is a fixed-size int64 header (how many tensors, and each one's dtype
and shape, or -1 dimensions for one that is absent), then the tensors: labels,
image, un-normalised image, segment output, window. Sends are asynchronous, at most one step in
flight. The first stage's inbox and the last stage's outbox talk to nobody: a
stage reads its carry from its inbox and writes it to its outbox wherever it
sits, and one process is a stage that is both first and last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from contsup.context import ContextMode
from contsup.data.parts import BatchPart
from contsup.distributed.errors import DistributedError, lost
from contsup.distributed.layout import Layout
from contsup.network import Carry

__all__ = ["Clock", "End", "Inbox", "Outbox", "Start", "inbox", "outbox", "receive", "wait_sent"]

# dtypes a boundary tensor may have, by the code its header sends.
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64]
_MAX_DIMS = 6
_BATCH = 3  # the batch's tensors first: labels, image, un-normalised image


@dataclass
class Clock:
    """Seconds a stage was blocked on its neighbours (the bubble, from its side)."""

    waiting: float = 0.0


def _header_size(mode: ContextMode) -> int:
    return 1 + (_BATCH + mode.recent + 1) * (2 + _MAX_DIMS)


class Inbox:
    """The carry from the stage before, global rank ``peer``.

    Example::

        carry, part = inbox.receive(part)  # carry.out and the window; part.y and the images
    """

    def __init__(self, peer: int, mode: ContextMode, unit: int, device: torch.device, clock: Clock):
        self.peer, self.mode, self.unit, self.device, self.clock = peer, mode, unit, device, clock

    def receive(self, part: BatchPart) -> tuple[Carry, BatchPart]:
        """The carry unit ``unit`` (this stage's first) reads, and the labels and images
        of this replica's slice of the batch (``part``: the batch's size), as the stage
        before sent them."""
        header = torch.empty(_header_size(self.mode), dtype=torch.int64, device=self.device)
        receive(header, self.peer, self.clock)
        header = header.cpu()
        received = []
        for i in range(int(header[0])):
            row = 1 + i * (2 + _MAX_DIMS)
            dims = int(header[row + 1])
            if dims < 0:
                received.append(None)
                continue
            shape = header[row + 2 : row + 2 + dims].tolist()
            tensor = torch.empty(shape, dtype=_DTYPES[int(header[row])], device=self.device)
            receive(tensor, self.peer, self.clock)
            received.append(tensor)
        y, x, raw, out, *window = received
        return Carry.resumed(self.mode, out, window, self.unit), BatchPart(x, y, raw, part.total)


class Outbox:
    """The carry to the stage after, global rank ``peer``.

    Example::

        outbox.send(carry, part)       # returns at once; the next send waits for this one
        outbox.flush()                 # before the stage reads what it sent, or ends
    """

    def __init__(self, peer: int, mode: ContextMode, device: torch.device, clock: Clock):
        self.peer, self.mode, self.device, self.clock = peer, mode, device, clock
        self._sending: list = []  # works and tensors of the last send, kept alive until done

    def send(self, carry: Carry, part: BatchPart) -> None:
        """Send ``part``'s labels and images (those not None) with ``carry.out`` and
        ``carry.window()``, after the previous send completes."""
        self.flush()  # at most one step in flight: memory stays bounded
        tensors = [part.y, part.x, part.raw, carry.out, *carry.window()]
        header = torch.zeros(_header_size(self.mode), dtype=torch.int64)
        header[0] = len(tensors)
        for i, t in enumerate(tensors):
            row = 1 + i * (2 + _MAX_DIMS)
            if t is None:
                header[row + 1] = -1
                continue
            if t.dtype not in _DTYPES or t.dim() > _MAX_DIMS:
                raise DistributedError(f"cannot send a boundary tensor of {t.dtype}, {t.dim()}-d")
            header[row] = _DTYPES.index(t.dtype)
            header[row + 1] = t.dim()
            header[row + 2 : row + 2 + t.dim()] = torch.tensor(t.shape)
        sent = (t.detach().contiguous() for t in tensors if t is not None)
        payload = [header.to(self.device), *sent]
        try:
            self._sending = [(dist.isend(t, dst=self.peer), t) for t in payload]
        except RuntimeError as error:
            raise lost(self.peer, error) from None

    def flush(self) -> None:
        """Wait until the last carry sent has been received."""
        wait_sent(self._sending, self.peer, self.clock)
        self._sending = []


def receive(tensor: torch.Tensor, peer: int, clock: Clock) -> None:
    """Receive ``tensor`` from ``peer`` in place, counting the wait on ``clock``.

    Example::

        receive(torch.empty(3), 0, clock)
    """
    started = time.perf_counter()
    try:
        dist.recv(tensor, src=peer)
    except RuntimeError as error:
        raise lost(peer, error) from None
    clock.waiting += time.perf_counter() - started


def wait_sent(sending: list, peer: int, clock: Clock) -> None:
    """Wait for ``(work, tensor)`` sends to ``peer``, counting the wait on ``clock``.

    Example::

        wait_sent([(dist.isend(t, dst=1), t)], 1, clock)
    """
    started = time.perf_counter()
    for work, _ in sending:
        try:
            work.wait()
        except RuntimeError as error:
            raise lost(peer, error) from None
    clock.waiting += time.perf_counter() - started


class Start:
    """The first stage's inbox: a fresh carry, from nobody."""

    def __init__(self, mode: ContextMode):
        self.mode = mode

    def receive(self, part: BatchPart) -> tuple[Carry, BatchPart]:
        return Carry(self.mode), part


class End:
    """The last stage's outbox: its carry ends here (its output is the model's logits)."""

    def send(self, carry: Carry, part: BatchPart) -> None:
        pass

    def flush(self) -> None:
        pass


def inbox(layout: Layout, mode: ContextMode, device: torch.device, clock: Clock) -> Inbox | Start:
    """Where ``layout``'s stage reads its carry from.

    Example::

        carry, part = inbox(layout, learner.context, device, clock).receive(part)
    """
    if layout.previous is None:
        return Start(mode)
    return Inbox(layout.previous, mode, layout.units.start, device, clock)


def outbox(layout: Layout, mode: ContextMode, device: torch.device, clock: Clock) -> Outbox | End:
    """Where ``layout``'s stage sends its carry.

    Example::

        outbox(layout, learner.context, device, clock).send(carry, part)
    """
    return End() if layout.next is None else Outbox(layout.next, mode, device, clock)
