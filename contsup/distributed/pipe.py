"""A rank's ``Pipeline``: its ``Stage`` of units, composed with the wire to its
neighbours and the replicas of its stage, as the ``Layout`` places it.

It takes whole batches on every rank (``local_backward``, ``evaluate``), or only
the part of each batch its rank loads (``local_backward_part``, ``evaluate_parts``,
with ``data.train_parts(generator, pipe.data_part)``): then each image is decoded
once in the world, and later stages get labels and images from the stage before.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from contsup.data.parts import BatchPart
from contsup.distributed.feed import Needs, data_part
from contsup.distributed.layout import Layout, stage_costs
from contsup.distributed.replica import replicas, world
from contsup.distributed.shadow_feed import shadow_feed
from contsup.distributed.stage import Stage
from contsup.distributed.wire import Clock, inbox, outbox
from contsup.learner import LocalLearner
from contsup.metrics import Evaluation, UnitTotals

__all__ = ["Pipeline", "StageStep", "pipeline"]


@dataclass
class StageStep:
    """What one stage's ``local_backward`` returns.

    ``losses[i]`` is unit ``units[i]``'s loss on this rank's ``size`` images, and
    ``correct[i]`` how many of them its head (the last unit: the classifier) got
    right; ``logits`` the final logits on the last stage (None elsewhere).
    """

    units: range
    losses: list[float]
    correct: list[int]
    size: int
    logits: torch.Tensor | None


class Pipeline:
    """One rank's share of a ``LocalLearner``: its stage's units, and the links to the
    stages before and after it and to its data-parallel replicas.

    Example::

        pipe = contsup.distributed.pipeline(learner, mesh)
        optimizer = torch.optim.SGD(pipe.parameters(), lr=0.1)
        for x, y, _ in batches:          # the same batches on every rank
            optimizer.zero_grad()
            step = pipe.local_backward(x, y)
            optimizer.step()
        result = pipe.evaluate(test_batches)   # .accuracy, .head_accuracies, ...

    With ``mesh=None`` it is the whole learner in one process (no communication).
    ``data_part`` is the part of every batch this rank loads (``Batches.train_parts``)
    for ``local_backward_part`` and ``evaluate_parts``; ``needs_after`` what the
    stages after this one read of a batch, so what this one sends them.
    """

    def __init__(
        self,
        learner: LocalLearner,
        mesh: DeviceMesh | None = None,
        device: torch.device | str | None = None,
        *,
        balance: str | list[float] = "cost",
        batch_size: int = 32,
    ):
        self.learner = learner
        self.mesh = mesh
        self.device = torch.device(device) if device is not None else _device_of(learner)
        self.world = world(mesh, self.device)
        self.costs = stage_costs(
            learner, balance, mesh, batch_size, self.device, self.world.all_reduce
        )
        self.layout = Layout.of(mesh, self.costs)
        self.owned = Stage(learner, self.layout.units, self.device)
        self.data_parallel = replicas(self.layout, self.device)
        self.clock = Clock()
        self.inbox = inbox(self.layout, learner.context, self.device, self.clock)
        self.outbox = outbox(self.layout, learner.context, self.device, self.clock)
        # Momentum heads at the stage's ends: weights sent back, and followed.
        self.shadow_out, self.shadow_in = shadow_feed(learner, self.layout, self.clock)
        self.data_part = data_part(self.layout)  # what this rank loads of every batch
        self.needs_after = Needs.after(learner, self.layout.units)  # what later stages read
        self.computing = 0.0  # seconds in this stage's units

    # -- where this stage sits ----------------------------------------------------

    @property
    def units(self) -> range:
        return self.layout.units

    @property
    def stage(self) -> int:
        return self.layout.stage

    @property
    def first(self) -> bool:
        return self.layout.first

    @property
    def last(self) -> bool:
        return self.layout.last

    @property
    def waiting(self) -> float:
        """Seconds blocked on a peer (the bubble, from this stage's side)."""
        return self.clock.waiting

    @waiting.setter
    def waiting(self, seconds: float) -> None:
        self.clock.waiting = seconds

    # -- what it owns -------------------------------------------------------------

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This stage's parameters, named as in ``learner.named_parameters()``."""
        return list(self.owned.named_learner_parameters)

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This stage's entries of ``learner.state_dict()``, under the same names."""
        state = self.learner.state_dict()
        return {n: state[n] for n in self.owned.state_names}

    def shard(self, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
        """This replica's slice of each batch tensor (contiguous, sizes differ by at most 1)."""
        return self.data_parallel.shard(*tensors)

    # -- what it does ---------------------------------------------------------------

    def local_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        raw: torch.Tensor | None = None,
        autocast: torch.dtype | None = None,
    ) -> StageStep:
        """``LocalLearner.local_backward`` for this stage's units on this replica's slice;
        gradients are averaged over replicas. The caller steps the optimizer.

        Example::

            step = pipe.local_backward(x, y)     # x, y: the whole batch, on every rank
            optimizer.step()
        """
        return self.local_backward_part(self._part_of(x, y, raw), autocast)

    def local_backward_part(
        self, part: BatchPart, autocast: torch.dtype | None = None
    ) -> StageStep:
        """``local_backward`` on the part of a batch this rank loads (``data_part``):
        the first stage's slice; later stages get theirs from the stage before.

        Example::

            for part in data.train_parts(generator, pipe.data_part):
                step = pipe.local_backward_part(part)
                optimizer.step()
        """
        units, size = self.units, self.data_part.size(part.total)
        self.data_parallel.broadcast_buffers(self.owned.buffers())
        self.shadow_out.send()  # the weights the stage before's last head follows
        losses, correct, logits = [0.0] * len(units), [0] * len(units), None
        if size:  # a replica whose slice of a small last batch is empty sits it out
            carry, part = self.inbox.receive(part)
            started = time.perf_counter()
            unit_losses, unit_correct = self.learner.local_units(
                part.x, part.y, carry, units.start, units.stop, raw=part.raw, autocast=autocast
            )
            # One host sync per step: losses and counts read together (counts are exact
            # in float64, and float32 losses too).
            read = torch.cat([torch.stack(unit_losses).double(), torch.stack(unit_correct)])
            values = read.tolist()
            losses, correct = values[: len(units)], [int(c) for c in values[len(units) :]]
            self.computing += time.perf_counter() - started
            self.outbox.send(carry, self.needs_after.sent(part, self.learner))
            logits = carry.out if self.last else None
        self.shadow_in.follow()  # what local_units does between its units, one process
        self.data_parallel.average_gradients(self.parameters(), size / part.total)
        return StageStep(units, losses, correct, size, logits)

    def evaluate(
        self, batches: Iterable[tuple[torch.Tensor, ...]], autocast: torch.dtype | None = None
    ) -> Evaluation:
        """The inference model and each local head on ``batches``; the same on every rank.

        Example::

            result = pipe.evaluate(data.test())
            result.accuracy, result.head_accuracies
        """
        return self.evaluate_parts((self._part_of(x, y) for x, y, *_ in batches), autocast)

    def evaluate_parts(
        self, parts: Iterable[BatchPart], autocast: torch.dtype | None = None
    ) -> Evaluation:
        """``evaluate`` on the part of each batch this rank loads (``data_part``).

        Example::

            result = pipe.evaluate_parts(data.test_parts(pipe.data_part))
        """
        learner = self.learner
        with_heads = learner.local_loss == "ce"
        needs_after = replace(self.needs_after, raw=False)  # no decoder runs in evaluation
        totals = UnitTotals.zeros(learner.k, self.device)
        learner.eval()
        self.data_parallel.broadcast_buffers(self.owned.buffers())
        with torch.no_grad():
            for part in parts:
                totals.images += part.total  # the whole batch: every rank counts every image
                if not self.data_part.size(part.total):
                    continue
                carry, part = self.inbox.receive(part)
                x, y = part.x, part.y
                on_boundary = _head_scorer(learner, totals, y) if with_heads else None
                with torch.autocast(y.device.type, dtype=autocast, enabled=autocast is not None):
                    out = learner.network.run(
                        x, carry, self.units.start, self.units.stop, on_boundary
                    )
                if self.last:
                    totals.score(learner.k - 1, out, y)
                self.outbox.send(carry, needs_after.sent(part, learner))
        self.flush()
        learner.train()
        return Evaluation.of(totals.means(self), learner.k - 1 if with_heads else 0)

    def _part_of(
        self, x: torch.Tensor, y: torch.Tensor, raw: torch.Tensor | None = None
    ) -> BatchPart:
        """This replica's slice of a whole batch (later stages still take theirs from
        the stage before, as with loaded parts)."""
        total = len(y)
        x, y, raw = self.shard(x, y, raw)
        return BatchPart(x, y, raw, total)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor``'s sum (or ``op="max"``) over all ranks, in place (a no-op in one
        process); returns it.

        Example::

            seen = pipe.all_reduce(torch.tensor([images]))
        """
        self.world.all_reduce(tensor, op=op)
        return tensor

    def flush(self) -> None:
        """Wait until the last boundary tensors and weights sent have been received."""
        self.outbox.flush()
        self.shadow_out.flush()


def _head_scorer(learner: LocalLearner, totals: UnitTotals, y: torch.Tensor):
    """An ``on_boundary`` that scores head j on its boundary into ``totals``."""

    def score(j: int, h: torch.Tensor) -> None:
        totals.score(j, learner.heads[j](h), y)

    return score


def _device_of(learner: LocalLearner) -> torch.device:
    parameter = next(learner.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def pipeline(
    learner: LocalLearner,
    mesh: DeviceMesh | None = None,
    device: torch.device | str | None = None,
    *,
    balance: str | list[float] = "cost",
    batch_size: int = 32,
) -> Pipeline:
    """This rank's stage of ``learner`` on ``mesh`` (dims ``("dp", "pp")``), its
    modules moved to ``device`` and the other stages' freed (moved to the meta device).

    Example::

        mesh = init_mesh(pipeline=2)            # under torchrun
        pipe = pipeline(learner, mesh, balance="time", batch_size=128)
        step = pipe.local_backward(x, y)        # then optimizer.step()

    Args:
        balance: what contiguous stages balance: ``cost`` (the partition's objective,
            heads and bridges included), ``time`` (each unit's step timed once on
            random data of ``batch_size`` images on ``device``, averaged over
            ranks: the fastest pipe, since time is not proportional to FLOPs), or
            one number per unit.

    Raises ``DistributedError`` when the mesh has more stages than ``learner`` has segments.
    Every split gives the same result; only the speed differs.
    """
    return Pipeline(learner, mesh, device, balance=balance, batch_size=batch_size)
