"""Turn a traced graph and a list of cut positions into K runnable segments.

Each segment is an ordinary ``nn.Module`` that owns exactly the submodules,
parameters and buffers its nodes use, under the same dotted names as in the
original model (so ``segment.state_dict()`` keys match the model's). It keeps one
compiled forward for training and one for evaluation, because fx bakes
``self.training`` branches into a graph, and picks by its own ``training`` flag.
"""

from __future__ import annotations

import inspect
import itertools
import linecache
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from partitioner.cuts import is_carried
from partitioner.errors import PartitionError

__all__ = ["Segment", "assign_ownership", "segment_graphs"]


def segment_graphs(
    gm: fx.GraphModule,
    values: dict[str, Any],
    cuts: Sequence[tuple[int, tuple[str, ...]]],
    *,
    cache: dict | None = None,
) -> list[fx.Graph]:
    """Cut ``gm`` after each ``(position, boundary names)`` into len(cuts) + 1 graphs.

    Example::

        graphs = segment_graphs(gm, prof.values, [(c.position, c.boundary) for c in cuts])

    Segment ``i`` takes the boundary tensors of cut ``i - 1`` as inputs (the model
    input for the first) and returns those of cut ``i`` (the model output for the
    last). Carried values (shape integers, flags, parameters) are re-created in
    every segment that needs them. With ``cache``, a segment between the same two
    edges of the same ``gm`` is cut once and its graph shared.
    """
    nodes = list(gm.graph.nodes)
    by_name = {n.name: n for n in nodes}
    first_input = next(n for n in nodes if n.op == "placeholder")
    edges = [(-1, (first_input,)), *((p, tuple(by_name[b] for b in names)) for p, names in cuts)]
    cache = {} if cache is None else cache
    graphs = []
    for (start, inputs), (stop, outputs) in itertools.pairwise([*edges, (len(nodes) - 1, None)]):
        key = (id(gm), start, inputs, stop, outputs)
        if key not in cache:
            cache[key] = _one_segment(gm, values, nodes, start, stop, inputs, outputs)
        graphs.append(cache[key])
    return graphs


def _one_segment(gm, values, nodes, start, stop, inputs, outputs) -> fx.Graph:
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for node in inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    in_range = set(nodes[start + 1 : stop + 1])

    def materialize(node: fx.Node) -> Any:
        if node in env:
            return env[node]
        if node.op == "placeholder":
            env[node] = _default_of(node)
            return env[node]
        if node not in in_range and not is_carried(node, values):
            raise AssertionError(f"tensor {node.name} crosses a cut without being a boundary")
        for arg in node.all_input_nodes:
            materialize(arg)
        env[node] = graph.node_copy(node, env.__getitem__)
        return env[node]

    for node in nodes[start + 1 : stop + 1]:
        # get_attr nodes are fetched where they are used, so a parameter is owned
        # by the segment that computes with it, not by the one fx listed it in.
        if node.op not in ("placeholder", "get_attr", "output"):
            materialize(node)
    if outputs is None:
        output = nodes[-1]
        for arg in output.all_input_nodes:
            materialize(arg)
        graph.output(fx.map_arg(output.args[0], env.__getitem__))
    else:
        graph.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[o] for o in outputs))
    graph.lint()
    return graph


def _default_of(placeholder: fx.Node) -> Any:
    if not placeholder.args or placeholder.args[0] is inspect.Parameter.empty:
        raise PartitionError(
            f"forward argument '{placeholder.target}' has no default; only the first "
            "argument can be an input of a partitioned model"
        )
    return placeholder.args[0]


_source_ids = itertools.count()


def _compile(graph: fx.Graph) -> Callable:
    """Python function ``forward(self, ...)`` for ``graph``, attributes looked up on ``self``."""
    code = graph.python_code(root_module="self")
    filename = f"<partitioner segment {next(_source_ids)}>"
    # Registering the source lets tracebacks and debuggers show the segment's code.
    linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)
    namespace = dict(code.globals)
    exec(compile(code.src, filename, "exec"), namespace)
    return namespace["forward"]


def _copy_attr(source: nn.Module, target: nn.Module, path: str) -> None:
    *parents, name = path.split(".")
    for part in parents:
        if not hasattr(target, part):
            target.add_module(part, nn.Module())
        source, target = getattr(source, part), getattr(target, part)
    value = getattr(source, name)
    if isinstance(value, nn.Parameter):
        target.register_parameter(name, value)
    elif name in source._buffers:
        target.register_buffer(
            name, value, persistent=name not in source._non_persistent_buffers_set
        )
    else:
        setattr(target, name, value)


def _referenced_paths(*graphs: fx.Graph) -> list[str]:
    """Module and attribute paths in first-use order (a set would order them by hash,
    which changes between processes and with it the order of ``parameters()``)."""
    paths = (n.target for g in graphs for n in g.nodes if n.op in ("call_module", "get_attr"))
    return list(dict.fromkeys(paths))


class Segment(nn.Module):
    """A contiguous piece of a traced model, runnable on its own.

    Example::

        seg = Segment(model, train_graph, eval_graph)
        h = seg(x)          # the eval graph in eval mode, the train graph in train mode

    The segment shares parameters, buffers and leaf submodules with ``model``:
    it is a view of the model's weights, not a copy.
    """

    def __init__(self, model: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph):
        super().__init__()
        paths = _referenced_paths(eval_graph, train_graph)
        # Parents before children, so a leaf module is installed before anything below it.
        for path in sorted(paths, key=lambda p: p.count(".")):
            _copy_attr(model, self, path)
        self._graphs = {True: train_graph, False: eval_graph}
        # Compiled on first use: a planner pricing many K never runs one in eval mode.
        self._forwards: dict[bool, Callable] = {}

    def _adopt(self, model: nn.Module, path: str) -> None:
        """Take ownership of a parameter or buffer that no graph node uses."""
        _copy_attr(model, self, path)

    def generated_code(self, training: bool | None = None) -> str:
        """The generated Python code this segment runs (train or eval graph)."""
        mode = self.training if training is None else training
        return self._graphs[mode].python_code(root_module="self").src

    def prepare(self) -> None:
        """Compile both modes' forwards now, before ``torch.compile`` traces this segment:
        a first-use compile inside a traced region breaks the graph."""
        for mode in self._graphs:
            self._forward_of(mode)

    def _forward_of(self, training: bool) -> Callable:
        forward = self._forwards.get(training)
        if forward is None:
            forward = self._forwards[training] = _compile(self._graphs[training])
        return forward

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self._forward_of(self.training)(self, *inputs)

    def __getstate__(self) -> dict:
        # Compiled functions do not pickle; the graphs do, and are compiled again on load.
        state = dict(self.__dict__)
        state.pop("_forwards")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._forwards = {}


def assign_ownership(model: nn.Module, segments: Sequence[Segment]) -> None:
    """Every parameter and buffer in exactly one segment; unused ones join a relative.

    Example::

        segments = [Segment(model, t, e) for t, e in zip(train_graphs, eval_graphs)]
        assign_ownership(model, segments)

    Tied weights used by two segments raise ``PartitionError``: each segment
    trains its own parameters, so a shared one could not be split.
    """
    owner: dict[int, int] = {}
    for i, segment in enumerate(segments):
        for name, t in [*segment.named_parameters(), *segment.named_buffers()]:
            if owner.setdefault(id(t), i) != i:
                raise PartitionError(
                    f"'{name}' is used by segments {owner[id(t)]} and {i}; tied weights "
                    "cannot be split across segments (untie them or use a smaller k)"
                )
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    # Each segment's names, kept up to date as it adopts: an adopted tensor is a
    # relative for the next one.
    held = [[n for n, _ in (*s.named_parameters(), *s.named_buffers())] for s in segments]
    for name, t in named:
        if id(t) not in owner:
            owner[id(t)] = _nearest_relative(name, held)
            segments[owner[id(t)]]._adopt(model, name)
            held[owner[id(t)]].append(name)


def _nearest_relative(path: str, held: Sequence[Sequence[str]]) -> int:
    """The segment whose ``held`` names include the closest relative of ``path`` (the
    last one if none does)."""
    parts = path.split(".")[:-1]
    while parts:
        prefix = ".".join(parts) + "."
        for i, segment_names in enumerate(held):
            if any(n.startswith(prefix) for n in segment_names):
                return i
        parts.pop()
    return len(held) - 1
