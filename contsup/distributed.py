"""Pipelined local learning on ``torch.distributed``, with data parallelism per stage.

Segments are gradient-isolated, so a pipeline of them needs no backward pass
through the pipe and no flush: stage s runs forward, local backward and its
optimizer step on batch t, sends its boundary tensors downstream, and goes on to
batch t+1 while stage s+1 works on batch t. Each segment sees the same steps in
the same order as in one process, so the result is bitwise the same.

Ranks form a ``DeviceMesh`` with dims ``("dp", "pp")``. A stage is a contiguous run
of units (unit j: the bridge into segment j, segment j, head j), balanced by the
partition's costs or by each unit's measured step time. Every rank replays the
same batches (same seed, sampler and augmentation), so only boundary tensors
travel: segment ``b-1``'s output and the earlier boundary inputs that ``Rn``
bridges further down read. Each ``dp`` replica takes its slice of every batch and
averages its stage's gradients with the other replicas of that stage, weighted by
slice size, as DDP would.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from contsup.errors import ContsupError
from contsup.learner import Carry, LocalLearner
from partitioner.balance import min_max_partition
from partitioner.plan import objective_cost

__all__ = [
    "DistributedError",
    "Evaluation",
    "Pipeline",
    "RankLost",
    "StageStep",
    "init_mesh",
    "pipeline",
    "stage_bounds",
]

# dtypes a boundary tensor may have, by the code its header sends.
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
_MAX_DIMS = 6
TIMEOUT = timedelta(minutes=10)  # how long a rank waits for a peer that hangs without dying


class DistributedError(ContsupError):
    """A pipeline or launch that cannot work as asked (P > K, world size not divisible by P)."""


class RankLost(RuntimeError):
    """A peer rank stopped (killed, crashed or unreachable) while this one waited for it."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets RANK)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_mesh(pipeline: int, device: str = "cpu") -> DeviceMesh | None:
    """Join the torchrun job and arrange its ranks as a ``("dp", "pp")`` mesh.

    Example::

        mesh = init_mesh(pipeline=2, device="cuda")   # under torchrun --nproc-per-node 4
        mesh["pp"].size(), mesh["dp"].size()          # 2, 2

    Returns None for a single process (``pipeline == 1`` outside torchrun).
    Backend: NCCL for CUDA, gloo otherwise. Raises ``DistributedError`` for
    ``pipeline > 1`` outside torchrun and for a world size ``pipeline`` does not divide.
    """
    if pipeline < 1:
        raise DistributedError(f"--pipeline takes a number of stages >= 1, got {pipeline}")
    if not launched():
        if pipeline > 1:
            raise DistributedError(
                f"--pipeline {pipeline} needs one process per stage: launch with "
                f"`torchrun --nproc-per-node {pipeline} -m contsup train ...`"
            )
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world % pipeline:
        raise DistributedError(
            f"the world size {world} is not divisible by --pipeline {pipeline}; use a "
            "multiple of P processes (P pipeline stages times the data-parallel size)"
        )
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return init_device_mesh(device_type, (world // pipeline, pipeline), mesh_dim_names=("dp", "pp"))


def stage_bounds(costs: list[float], stages: int) -> list[int]:
    """Where each of ``stages`` contiguous stages starts, plus the end: the most
    balanced split of the unit ``costs`` (the largest stage as small as can be).

    Example::

        >>> stage_bounds([1, 1, 1, 1], 2), stage_bounds([3, 1, 1, 1], 2)
        ([0, 2, 4], [0, 1, 4])
    """
    if not 1 <= stages <= len(costs):
        raise DistributedError(
            f"--pipeline {stages} needs at least {stages} segments; the model has {len(costs)}"
        )
    return [0, *min_max_partition(costs, stages), len(costs)]


def unit_seconds(
    learner: LocalLearner, batch_size: int, device: torch.device, repeats: int = 2
) -> list[float]:
    """Seconds each unit's training step takes on random data of ``batch_size`` images,
    timed on a copy of ``learner`` on ``device`` (the learner and the random state are
    left as they were); the fastest of ``repeats`` runs.

    Example::

        unit_seconds(learner, 128, torch.device("cpu"))  # resnet32, K=4: [0.28, 0.14, 0.12, 0.09]
    """
    twin = copy.deepcopy(learner).to(device)
    shape = (batch_size, *learner.partition.input_shape[1:])
    best = [math.inf] * learner.k
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(shape, device=device)
        y = torch.zeros(batch_size, dtype=torch.long, device=device)  # class 0 always exists
        for _ in range(repeats):
            carry = Carry(learner.context)
            for j in range(learner.k):
                _synchronize(device)
                started = time.perf_counter()
                twin.local_units(x, y, carry, j, j + 1)
                _synchronize(device)
                best[j] = min(best[j], time.perf_counter() - started)
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unit_costs(learner: LocalLearner) -> list[float]:
    """Each unit's cost under the partition's objective, its heads and bridges included."""
    part = learner.partition
    return [
        objective_cost(stats, part.objective) + extra
        for stats, extra in zip(part.stats, part.extra_costs)
    ]


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


@dataclass
class Evaluation:
    """Test results, the same on every rank. Head lists are empty for contrastive heads.

    ``accuracy`` and ``loss``: the inference model's top-1 accuracy and mean
    cross-entropy; ``head_accuracies`` and ``head_losses``: each local head's, on
    its own boundary (how linearly separable each depth is).
    """

    accuracy: float
    loss: float
    head_accuracies: list[float]
    head_losses: list[float]


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
        self.stages = mesh["pp"].size() if mesh is not None else 1
        self.replicas = mesh["dp"].size() if mesh is not None else 1
        self.stage = mesh.get_local_rank("pp") if mesh is not None else 0
        self.replica = mesh.get_local_rank("dp") if mesh is not None else 0
        self.device = torch.device(device) if device is not None else _device_of(learner)
        if isinstance(balance, str) and balance not in ("cost", "time"):
            raise DistributedError(f"stages balance cost or time, not {balance!r}")
        if not isinstance(balance, str) and len(balance) != learner.k:
            raise DistributedError(f"balance needs {learner.k} unit costs, got {len(balance)}")
        if self.stages == 1 or balance == "cost":
            self.costs = unit_costs(learner)
        elif balance == "time":
            shard = -(-batch_size // self.replicas)
            seconds = torch.tensor(unit_seconds(learner, shard, self.device), dtype=torch.float64)
            if mesh is not None:  # every rank must cut the same way: average their clocks
                self._all_reduce(seconds)
            self.costs = seconds.tolist()
        else:
            self.costs = [float(c) for c in balance]
        bounds = stage_bounds(self.costs, self.stages)
        self.bounds = bounds
        self.units = range(bounds[self.stage], bounds[self.stage + 1])
        for module in self.modules():
            module.to(self.device)
        owned = {id(m) for m in self.modules()}
        for j in range(learner.k):  # other stages' units: freed, their shapes kept
            for module in self.unit_modules(j):
                if id(module) not in owned:
                    module.to("meta")
        for name in ("mean", "std"):
            setattr(learner, name, getattr(learner, name).to(self.device))
        # Fixed from here on; the hot path reads them every step.
        self._named_parameters = [
            (n, p) for n, p in learner.named_parameters() if self.unit_of(n) in self.units
        ]
        self._buffers = [b for module in self.modules() for b in module.buffers()]
        if mesh is not None:
            ranks = mesh.mesh[self.replica]
            self.previous = int(ranks[self.stage - 1]) if self.stage > 0 else None
            self.next = int(ranks[self.stage + 1]) if self.stage < self.stages - 1 else None
            self.dp_group = mesh.get_group("dp") if self.replicas > 1 else None
        else:
            self.previous = self.next = self.dp_group = None
        self._sending: list = []  # works and tensors of the last send, kept alive until done
        self.waiting = 0.0  # seconds blocked on a peer (the bubble, from this stage's side)
        self.computing = 0.0

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def unit_modules(self, j: int) -> list[nn.Module]:
        """Unit ``j``: the bridge into segment j, segment j, its head and decoder."""
        learner = self.learner
        modules = [learner.segments[j]]
        if j > 0:
            modules.append(learner.bridges[j - 1])
        if j < learner.k - 1:
            modules.append(learner.heads[j])
            if learner.decoders:
                modules.append(learner.decoders[j])
        return modules

    def modules(self) -> list[nn.Module]:
        return [m for j in self.units for m in self.unit_modules(j)]

    def unit_of(self, name: str) -> int:
        """Which unit owns the learner's state entry ``name``."""
        parts = name.split(".")
        if parts[0] == "network":
            index = int(parts[2])
            return index + 1 if parts[1] == "bridges" else index
        return int(parts[1])  # heads.j or decoders.j

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This stage's parameters, named as in ``learner.named_parameters()``."""
        return list(self._named_parameters)

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This stage's entries of ``learner.state_dict()``, under the same names."""
        state = self.learner.state_dict()
        return {n: t for n, t in state.items() if self.unit_of(n) in self.units}

    def shard(self, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
        """This replica's slice of each batch tensor (contiguous, sizes differ by at most 1)."""
        if self.replicas == 1:
            return list(tensors)
        return [None if t is None else t.tensor_split(self.replicas)[self.replica] for t in tensors]

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
        total = len(y)
        x, y, raw = self.shard(x, y, raw)
        if self.dp_group is not None:
            self._broadcast_buffers()
        losses, correct = [0.0] * len(self.units), [0] * len(self.units)
        carry = Carry(self.learner.context)
        if len(y):  # a replica whose slice of a small last batch is empty sits it out
            if not self.first:
                self._receive(carry)
            started = time.perf_counter()
            unit_losses, unit_correct = self.learner.local_units(
                x, y, carry, self.units.start, self.units.stop, raw=raw, autocast=autocast
            )
            losses = torch.stack(unit_losses).tolist()
            correct = torch.stack(unit_correct).tolist()
            self.computing += time.perf_counter() - started
            if not self.last:
                self._send(carry)
        if self.dp_group is not None:
            self._average_gradients(len(y) / total)
        return StageStep(self.units, losses, correct, len(y), carry.out if self.last else None)

    def evaluate(
        self, batches: Iterable[tuple[torch.Tensor, ...]], autocast: torch.dtype | None = None
    ) -> Evaluation:
        """The inference model and each local head on ``batches``; the same on every rank.

        Example::

            result = pipe.evaluate(data.test())
            result.accuracy, result.head_accuracies
        """
        learner = self.learner
        with_heads = learner.local_loss == "ce"
        k = learner.k
        # Sums: [correct of units 0..K-1 (K-1: the model), their cross-entropies, images]
        sums = torch.zeros(2 * k + 1, dtype=torch.float64)
        learner.eval()
        if self.dp_group is not None:
            self._broadcast_buffers()
        with torch.no_grad():
            for x, y, *_ in batches:
                sums[-1] += len(y)
                x, y = self.shard(x, y)
                if not len(y):
                    continue
                carry = Carry(learner.context)
                if not self.first:
                    self._receive(carry)
                on_boundary = _head_scorer(learner, sums, y) if with_heads else None
                with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
                    out = learner.network.run(
                        x, carry, self.units.start, self.units.stop, on_boundary
                    )
                if self.last:
                    _score(sums, k - 1, k, out, y)
                else:
                    self._send(carry)
        self.flush()
        learner.train()
        images = sums[-1].item()
        if self.mesh is not None:
            sums[-1] = 0
            self._all_reduce(sums)
        means = (sums[:-1] / images).tolist()
        heads = k - 1 if with_heads else 0
        return Evaluation(means[k - 1], means[2 * k - 1], means[:heads], means[k : k + heads])

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor``'s sum (or ``op="max"``) over all ranks, in place (a no-op in one
        process); returns it."""
        if self.mesh is not None:
            self._all_reduce(tensor, op=op)
        return tensor

    def flush(self) -> None:
        """Wait until the last boundary tensors sent have been received."""
        self._wait(self._sending, self.next)
        self._sending = []

    # -- messages between stages ------------------------------------------------

    def _header_size(self) -> int:
        return 1 + (self.learner.context.recent + 1) * (2 + _MAX_DIMS)

    def _send(self, carry: Carry) -> None:
        self.flush()  # at most one step in flight: memory stays bounded
        tensors = [carry.out, *carry.window()]
        header = torch.zeros(self._header_size(), dtype=torch.int64)
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
            self._sending = [(dist.isend(t, dst=self.next), t) for t in payload]
        except RuntimeError as error:
            raise self._lost(self.next, error) from None

    def _receive(self, carry: Carry) -> None:
        header = torch.empty(self._header_size(), dtype=torch.int64, device=self.device)
        self._recv(header)
        header = header.cpu()
        received = []
        for i in range(int(header[0])):
            row = 1 + i * (2 + _MAX_DIMS)
            shape = header[row + 2 : row + 2 + int(header[row + 1])].tolist()
            tensor = torch.empty(shape, dtype=_DTYPES[int(header[row])], device=self.device)
            self._recv(tensor)
            received.append(tensor)
        resumed = Carry.resumed(carry.mode, received[0], received[1:], self.units.start)
        carry.out, carry.inputs = resumed.out, resumed.inputs

    def _recv(self, tensor: torch.Tensor) -> None:
        started = time.perf_counter()
        try:
            dist.recv(tensor, src=self.previous)
        except RuntimeError as error:
            raise self._lost(self.previous, error) from None
        self.waiting += time.perf_counter() - started

    def _wait(self, works: list, peer: int | None) -> None:
        started = time.perf_counter()
        for work, _ in works:
            try:
                work.wait()
            except RuntimeError as error:
                raise self._lost(peer, error) from None
        self.waiting += time.perf_counter() - started

    def _lost(self, peer: int | None, error: Exception) -> RankLost:
        me = dist.get_rank()
        # gloo: "[.../pair.cc:545] Read error [127.0.0.1]:61083: Connection reset by peer. ..."
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]
        who = f"rank {peer}" if peer is not None else "another rank"
        return RankLost(f"{who} stopped, so rank {me} cannot go on ({reason})")

    # -- data parallelism -------------------------------------------------------

    def _all_reduce(self, tensor: torch.Tensor, group=None, op: str = "sum") -> None:
        moved = tensor.to(self.device)
        reduce = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        try:
            dist.all_reduce(moved, op=reduce, group=group)
        except RuntimeError as error:
            raise self._lost(None, error) from None
        tensor.copy_(moved)

    def _average_gradients(self, weight: float) -> None:
        """Replace each gradient by the slice-size-weighted mean over replicas (one
        all-reduce); a parameter without a gradient on every replica keeps none."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has_grad = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        flat = torch.cat([torch.cat([g.reshape(-1) * weight for g in grads]).float(), has_grad])
        self._all_reduce(flat, self.dp_group)
        offset = 0
        for p, g, flag in zip(params, grads, flat[-len(params) :].tolist()):
            size = p.numel()
            p.grad = flat[offset : offset + size].view_as(p).to(g.dtype) if flag else None
            offset += size

    def _broadcast_buffers(self) -> None:
        """Replica 0's batch-norm statistics on every replica, as DDP does: one
        broadcast per dtype of this stage's buffers, flattened together."""
        source = int(self.mesh.mesh[0, self.stage])
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for buffer in self._buffers:
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
        for buffers in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            try:
                dist.broadcast(flat, src=source, group=self.dp_group)
            except RuntimeError as error:
                raise self._lost(source, error) from None
            for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers])):
                buffer.copy_(value.view_as(buffer))


def _score(sums: torch.Tensor, unit: int, k: int, scores: torch.Tensor, y: torch.Tensor) -> None:
    """Add ``scores``' correct answers and summed cross-entropy to unit ``unit``'s sums."""
    sums[unit] += (scores.argmax(1) == y).sum().item()
    sums[k + unit] += torch.nn.functional.cross_entropy(scores.float(), y, reduction="sum").item()


def _head_scorer(learner: LocalLearner, sums: torch.Tensor, y: torch.Tensor):
    """An ``on_boundary`` that scores head j on its boundary into ``sums``."""

    def score(j: int, h: torch.Tensor) -> None:
        _score(sums, j, learner.k, learner.heads[j](h), y)

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
