"""The carry between stages, point to point: segment ``b-1``'s output and the window
of earlier boundary inputs that ``Rn`` bridges further down read.

A message is a fixed-size int64 header (how many tensors, and each one's dtype
and shape), then the tensors. Sends are asynchronous, at most one step in
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
from contsup.distributed.errors import DistributedError, lost
from contsup.distributed.layout import Layout
from contsup.network import Carry

__all__ = ["Clock", "End", "Inbox", "Outbox", "Start", "inbox", "outbox"]

# dtypes a boundary tensor may have, by the code its header sends.
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
_MAX_DIMS = 6


@dataclass
class Clock:
    """Seconds a stage was blocked on its neighbours (the bubble, from its side)."""

    waiting: float = 0.0


def _header_size(mode: ContextMode) -> int:
    return 1 + (mode.recent + 1) * (2 + _MAX_DIMS)


class Inbox:
    """The carry from the stage before, global rank ``peer``.

    Example::

        carry = inbox.receive()        # carry.out and the window; earlier inputs are None
    """

    def __init__(self, peer: int, mode: ContextMode, unit: int, device: torch.device, clock: Clock):
        self.peer, self.mode, self.unit, self.device, self.clock = peer, mode, unit, device, clock

    def receive(self) -> Carry:
        """The carry unit ``unit`` (this stage's first) reads, as the stage before sent it."""
        header = torch.empty(_header_size(self.mode), dtype=torch.int64, device=self.device)
        self._recv(header)
        header = header.cpu()
        received = []
        for i in range(int(header[0])):
            row = 1 + i * (2 + _MAX_DIMS)
            shape = header[row + 2 : row + 2 + int(header[row + 1])].tolist()
            tensor = torch.empty(shape, dtype=_DTYPES[int(header[row])], device=self.device)
            self._recv(tensor)
            received.append(tensor)
        return Carry.resumed(self.mode, received[0], received[1:], self.unit)

    def _recv(self, tensor: torch.Tensor) -> None:
        started = time.perf_counter()
        try:
            dist.recv(tensor, src=self.peer)
        except RuntimeError as error:
            raise lost(self.peer, error) from None
        self.clock.waiting += time.perf_counter() - started


class Outbox:
    """The carry to the stage after, global rank ``peer``.

    Example::

        outbox.send(carry)             # returns at once; the next send waits for this one
        outbox.flush()                 # before the stage reads what it sent, or ends
    """

    def __init__(self, peer: int, mode: ContextMode, device: torch.device, clock: Clock):
        self.peer, self.mode, self.device, self.clock = peer, mode, device, clock
        self._sending: list = []  # works and tensors of the last send, kept alive until done

    def send(self, carry: Carry) -> None:
        """Send ``carry.out`` and ``carry.window()``, after the previous send completes."""
        self.flush()  # at most one step in flight: memory stays bounded
        tensors = [carry.out, *carry.window()]
        header = torch.zeros(_header_size(self.mode), dtype=torch.int64)
        header[0] = len(tensors)
        for i, t in enumerate(tensors):
            if t.dtype not in _DTYPES or t.dim() > _MAX_DIMS:
                raise DistributedError(f"cannot send a boundary tensor of {t.dtype}, {t.dim()}-d")
            row = 1 + i * (2 + _MAX_DIMS)
            header[row] = _DTYPES.index(t.dtype)
            header[row + 1] = t.dim()
            header[row + 2 : row + 2 + t.dim()] = torch.tensor(t.shape)
        payload = [header.to(self.device), *(t.detach().contiguous() for t in tensors)]
        try:
            self._sending = [(dist.isend(t, dst=self.peer), t) for t in payload]
        except RuntimeError as error:
            raise lost(self.peer, error) from None

    def flush(self) -> None:
        """Wait until the last carry sent has been received."""
        started = time.perf_counter()
        for work, _ in self._sending:
            try:
                work.wait()
            except RuntimeError as error:
                raise lost(self.peer, error) from None
        self.clock.waiting += time.perf_counter() - started
        self._sending = []


class Start:
    """The first stage's inbox: a fresh carry, from nobody."""

    def __init__(self, mode: ContextMode):
        self.mode = mode

    def receive(self) -> Carry:
        return Carry(self.mode)


class End:
    """The last stage's outbox: its carry ends here (its output is the model's logits)."""

    def send(self, carry: Carry) -> None:
        pass

    def flush(self) -> None:
        pass


def inbox(layout: Layout, mode: ContextMode, device: torch.device, clock: Clock) -> Inbox | Start:
    """Where ``layout``'s stage reads its carry from.

    Example::

        carry = inbox(layout, learner.context, device, clock).receive()
    """
    if layout.previous is None:
        return Start(mode)
    return Inbox(layout.previous, mode, layout.units.start, device, clock)


def outbox(layout: Layout, mode: ContextMode, device: torch.device, clock: Clock) -> Outbox | End:
    """Where ``layout``'s stage sends its carry.

    Example::

        outbox(layout, learner.context, device, clock).send(carry)
    """
    return End() if layout.next is None else Outbox(layout.next, mode, device, clock)
