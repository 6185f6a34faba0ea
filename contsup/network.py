"""Units and the carry between them: the one walk that training, inference, a
pipeline stage and the memory prediction all take.

Unit j is the bridge into segment j, segment j, and segment j's head (and
decoder). The ``Carry`` is what flows from one unit to the next: the last
segment's output and the window of boundary inputs that later bridges read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from contsup.context import ContextMode, gather_sources

__all__ = ["Carry", "ContextNetwork", "Unit"]


@dataclass
class Carry:
    """What flows from one unit to the next: the last segment's output (detached while
    training) and the boundary inputs kept for later bridges.

    Example::

        carry = Carry(parse_context("R1E"))
        out = learner.unit(0)(x, carry)        # then carry.out = out, and unit 1 reads it
        carry.window()                         # what a pipeline stage sends on with carry.out

    ``inputs[i]`` is boundary i's input (the bridge's output), or None once no
    later bridge reads it.
    """

    mode: ContextMode
    out: torch.Tensor | None = None
    inputs: list = field(default_factory=list)

    def sources(self, boundary: int, image: torch.Tensor) -> list[torch.Tensor]:
        """What boundary ``boundary``'s bridge reads: earlier boundary inputs, or the image."""
        return gather_sources(boundary, self.mode, self.inputs, image)

    def keep(self, h: torch.Tensor) -> None:
        """Append boundary input ``h``, and let go of those no later bridge reads."""
        self.inputs.append(h)
        if len(self.inputs) > self.mode.recent:
            self.inputs[-1 - self.mode.recent] = None

    def window(self) -> list[torch.Tensor]:
        """The kept boundary inputs that later bridges read, oldest first."""
        recent = self.mode.recent
        return self.inputs[len(self.inputs) - recent :] if recent else []

    @classmethod
    def resumed(
        cls, mode: ContextMode, out: torch.Tensor, window: list[torch.Tensor], unit: int
    ) -> Carry:
        """The carry unit ``unit`` reads, rebuilt from ``out`` and a ``window()``: what
        a pipeline stage receives.

        Example::

            carry = Carry.resumed(mode, out, window, unit=2)   # carry.inputs: [.., h'_0]

        Before unit ``unit`` boundary inputs 0..unit-2 exist; only the window is real.
        """
        return cls(mode, out, [None] * (unit - 1 - len(window)) + list(window))


@dataclass(frozen=True)
class Unit:
    """Unit ``index`` of a learner: the bridge into its segment (None for the first),
    the segment, and the segment's head and decoder (None for the last, whose loss is
    the model's own, and in the inference network).

    Example::

        unit = learner.unit(1)
        out = unit(x, carry, detach=True)      # bridge, then segment; the bridge's output kept
        scores = unit.head(out)
    """

    index: int
    bridge: nn.Module | None
    segment: nn.Module
    head: nn.Module | None = None
    decoder: nn.Module | None = None

    def modules(self) -> list[nn.Module]:
        """The unit's modules: what a pipeline stage that runs it owns."""
        parts = (self.bridge, self.segment, self.head, self.decoder)
        return [m for m in parts if m is not None]

    def __call__(self, x: torch.Tensor, carry: Carry, *, detach: bool = False) -> torch.Tensor:
        """The segment's output on the bridge's output from ``carry`` (``x`` for the
        first unit); the bridge's output is kept in ``carry``, detached with ``detach``
        (training: no gradient may reach it from a later unit)."""
        h = x
        if self.bridge is not None:
            h = self.bridge(carry.out, carry.sources(self.index - 1, x), x)
            carry.keep(h.detach() if detach else h)
        return self.segment(h)


class ContextNetwork(nn.Module):
    """Segments chained through their bridges: the inference model, without heads.

    Example::

        net = learner.export()
        logits = net(x)
    """

    def __init__(self, segments: nn.ModuleList, bridges: nn.ModuleList, context: ContextMode):
        super().__init__()
        self.segments = segments
        self.bridges = bridges
        self.context = str(context)
        self.mode = context

    def sources(self, k: int, inputs: list, x: torch.Tensor) -> list[torch.Tensor]:
        """What boundary ``k``'s bridge reads: earlier boundary ``inputs``, or the image.

        Example::

            h = net.bridges[k](out, net.sources(k, inputs, x), x)   # a unit walked by hand
        """
        return gather_sources(k, self.mode, inputs, x)

    def unit(self, j: int) -> Unit:
        """Unit ``j`` without head: the bridge into segment j, and segment j."""
        return Unit(j, self.bridges[j - 1] if j > 0 else None, self.segments[j])

    def forward(self, x: torch.Tensor, on_boundary=None) -> torch.Tensor:
        """Logits; ``on_boundary(k, h_k)`` sees each segment's output on the way."""
        return self.run(x, Carry(self.mode), 0, len(self.segments), on_boundary)

    def run(self, x: torch.Tensor, carry: Carry, start: int, stop: int, on_boundary=None):
        """Units ``start..stop-1`` (bridge into segment j, then segment j) from ``carry``.

        Example::

            carry = Carry(net.mode)
            net.run(x, carry, 0, 2)            # a pipeline stage's units; then send the carry
            logits = net.run(x, carry, 2, len(net.segments))

        Returns the last segment's output and leaves ``carry`` ready for unit ``stop``.
        """
        for j in range(start, stop):
            carry.out = self.unit(j)(x, carry)
            if on_boundary is not None and j < len(self.bridges):
                on_boundary(j, carry.out)
        return carry.out
