"""Per-node costs, measured by running the graph on the meta device.

Running on ``meta`` executes every op's shape logic and autograd bookkeeping
without allocating data, so a model of any size costs no memory to profile.
Three costs come from one run:

* ``flops``: forward FLOPs, from the formulas of ``torch.utils.flop_counter``
  (2 per multiply-add). Training costs about ``TRAINING_FLOPS_MULTIPLIER`` times
  the forward; FlopCounterMode's own backward counts are wrong for grouped and
  depthwise convolutions, and the mode decomposes every op it has no formula for
  (batch norm, most of a CNN), which makes it several times slower than needed.
* ``saved_bytes``: the bytes autograd keeps for backward, seen through
  saved-tensor hooks (not guessed from output sizes: a ReLU saves its output, a
  Linear its input, a view nothing new). Each storage is charged once, to the
  first node that saves it; parameters are not activations and are not charged.
* ``param_bytes``: bytes of parameters and buffers, charged to the first node
  that uses them.

``measure_node_times`` adds a fourth, wall-clock time per node, on a real device.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from partitioner.errors import InputSizeError

__all__ = [
    "TRAINING_FLOPS_MULTIPLIER",
    "NodeCost",
    "GraphProfile",
    "count_flops",
    "profile",
    "measure_node_times",
]

TRAINING_FLOPS_MULTIPLIER = 3
"""Forward + backward FLOPs of a training step relative to the forward alone."""


@dataclass
class NodeCost:
    flops: int = 0
    saved_bytes: int = 0
    param_bytes: int = 0
    time_s: float = 0.0


@dataclass
class GraphProfile:
    """What one meta run of a graph found: each node's value and its costs."""

    values: dict[str, Any]
    costs: dict[str, NodeCost]
    # Every node that saves a value's storage for backward, by the value's node name.
    saved_by: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _FlopCounter(TorchDispatchMode):
    """Adds up forward FLOPs of the ops that have a formula; runs the others untouched."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn, *args, **kwargs) -> int:
    """Forward FLOPs of ``fn(*args, **kwargs)``; works on meta tensors too.

    Example::

        >>> count_flops(torch.nn.Linear(4, 8), torch.empty(3, 4))
        192
    """
    counter = _FlopCounter()
    with counter, torch.no_grad():
        fn(*args, **kwargs)
    return counter.total


class _ProfilingInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, param_storages: set[int], measure: bool):
        super().__init__(gm, garbage_collect_values=False)
        self.param_storages = param_storages
        self.measure = measure
        self.costs: dict[str, NodeCost] = {}
        self.saved: list[torch.Tensor] = []  # keeps storages alive so keys stay unique
        self.savers: dict[int, list[str]] = {}  # every node that saves a storage, in order
        self.current: NodeCost | None = None
        self.current_name = ""

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key in self.param_storages:
            return t
        savers = self.savers.get(key)
        if savers is None:  # charged to the first node that saves it
            savers = self.savers[key] = []
            self.saved.append(t)
            self.current.saved_bytes += t.untyped_storage().nbytes()
        if self.current_name not in savers:
            savers.append(self.current_name)
        return t

    def run_node(self, n: fx.Node) -> Any:
        self.current = self.costs.setdefault(n.name, NodeCost())
        self.current_name = n.name
        before = self.flop_counter.total
        result = super().run_node(n)
        self.current.flops += self.flop_counter.total - before
        return result

    def run(self, *args) -> Any:
        self.flop_counter = _FlopCounter()
        if not self.measure:
            with torch.no_grad():
                return super().run(*args)
        with (
            torch.enable_grad(),
            self.flop_counter,
            torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t),
        ):
            return super().run(*args)


class _Runner(nn.Module):
    """Lets ``functional_call`` swap in meta parameters around an interpreter run."""

    def __init__(self, gm: fx.GraphModule, interpreter: _ProfilingInterpreter):
        super().__init__()
        self.gm = gm
        self.interpreter = [interpreter]  # a list, so it is not registered as a child

    def forward(self, x: torch.Tensor) -> Any:
        return self.interpreter[0].run(x)


def _charge_parameters(gm: fx.GraphModule, costs: dict[str, NodeCost]) -> None:
    counted: set[int] = set()

    def bytes_of(tensors) -> int:
        total = 0
        for t in tensors:
            if isinstance(t, torch.Tensor) and id(t) not in counted:
                counted.add(id(t))
                total += t.numel() * t.element_size()
        return total

    for n in gm.graph.nodes:
        if n.op == "call_module":
            module = gm.get_submodule(n.target)
            owned = list(module.parameters()) + list(module.buffers())
            costs[n.name].param_bytes += bytes_of(owned)
        elif n.op == "get_attr" and n.users:
            # A get_attr travels with its first user, so the bytes are charged there.
            first_user = min(n.users, key=_position(gm))
            costs[first_user.name].param_bytes += bytes_of([_fetch_attr(gm, n.target)])


def _position(gm: fx.GraphModule):
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return order.__getitem__


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    meta = torch.empty_like(t, device="meta")
    return meta.requires_grad_(t.requires_grad)


def profile(gm: fx.GraphModule, example_input: torch.Tensor, *, costs: bool = True) -> GraphProfile:
    """Run ``gm`` on the meta device and measure every node's costs.

    Example::

        gm = trace(model, training=True)
        prof = profile(gm, torch.randn(8, 3, 32, 32))
        prof.costs["layer1_0_conv1"].flops

    Parameters are swapped for meta copies for the duration of the run, so the
    model itself is neither moved nor modified. A model whose leaf modules need
    real data (``if x.sum() > 0``) is run once on its own device instead, on a
    zero input, with its buffers restored afterwards. With ``costs=False`` only
    the values are recorded (a faster run, every cost left at zero).
    """
    try:
        interpreter = _run_on_meta(gm, example_input, costs)
    except Exception:
        try:
            interpreter = _run_for_real(gm, example_input, costs)
        except Exception as error:
            reason = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise InputSizeError(
                f"the model rejects an input of shape {tuple(example_input.shape)}: {reason}"
            ) from error
    for n in gm.graph.nodes:
        interpreter.costs.setdefault(n.name, NodeCost())
    _charge_parameters(gm, interpreter.costs)
    values = {n.name: v for n, v in interpreter.env.items()}
    saved_by = {
        name: tuple(interpreter.savers.get(_storage_key(v), ()))
        for name, v in values.items()
        if isinstance(v, torch.Tensor)
    }
    return GraphProfile(values=values, costs=interpreter.costs, saved_by=saved_by)


def _run_on_meta(
    gm: fx.GraphModule, example_input: torch.Tensor, costs: bool
) -> _ProfilingInterpreter:
    state = {
        **{k: _meta_like(p) for k, p in gm.named_parameters(remove_duplicate=False)},
        **{k: _meta_like(b) for k, b in gm.named_buffers(remove_duplicate=False)},
    }
    interpreter = _ProfilingInterpreter(gm, {_storage_key(t) for t in state.values()}, costs)
    x = torch.empty(example_input.shape, dtype=example_input.dtype, device="meta")
    runner = _Runner(gm, interpreter)
    torch.func.functional_call(runner, {f"gm.{k}": v for k, v in state.items()}, (x,))
    return interpreter


def _run_for_real(
    gm: fx.GraphModule, example_input: torch.Tensor, costs: bool
) -> _ProfilingInterpreter:
    tensors = [*gm.parameters(), *gm.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    interpreter = _ProfilingInterpreter(gm, {_storage_key(t) for t in tensors}, costs)
    with _buffers_restored(gm):
        interpreter.run(torch.zeros(example_input.shape, dtype=example_input.dtype, device=device))
    return interpreter


@contextmanager
def _buffers_restored(gm: fx.GraphModule):
    """Undo what a training-mode run does to buffers (batch-norm statistics)."""
    saved = {k: b.clone() for k, b in gm.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in gm.named_buffers():
                b.copy_(saved[k])


def measure_node_times(
    gm: fx.GraphModule, example_input: torch.Tensor, *, repeats: int = 5
) -> dict[str, float]:
    """Median forward wall time of every node on the device ``example_input`` lives on.

    Example::

        times = measure_node_times(gm, torch.randn(64, 3, 32, 32, device="cuda"))

    Buffers (batch-norm statistics) are restored afterwards, so measuring does not
    change the model.
    """
    device = example_input.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples: dict[str, list[float]] = {n.name: [] for n in gm.graph.nodes}

    class Timer(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            sync()
            start = time.perf_counter()
            result = super().run_node(n)
            sync()
            samples[n.name].append(time.perf_counter() - start)
            return result

    with torch.no_grad(), _buffers_restored(gm):
        for _ in range(repeats + 1):  # the first run warms up kernels and caches
            Timer(gm).run(example_input)
    return {name: statistics.median(ts[1:]) for name, ts in samples.items()}
