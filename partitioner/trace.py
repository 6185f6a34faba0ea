"""Trace a model into a torch.fx graph, keeping timm's non-traceable pieces opaque.

timm marks modules and functions that fx cannot trace through (data-dependent
control flow, asserts on shapes) in ``timm.layers._fx``; torchvision does the same
for ``torchvision.ops``. The tracer here honours both registries plus the user's
own, and turns a tracing failure into one sentence naming the module that broke.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Iterable

import torch.fx as fx
from torch import nn

from partitioner.errors import UntraceableModelError

__all__ = ["register_leaf_module", "trace"]

_user_leaf_modules: set[type[nn.Module]] = set()


def register_leaf_module(module_class: type[nn.Module]) -> type[nn.Module]:
    """Make fx call ``module_class`` as one opaque op instead of tracing into it.

    Usable as a decorator::

        @partitioner.register_leaf_module
        class MyDynamicBlock(nn.Module): ...

    A leaf module always lands whole inside one segment.
    """
    _user_leaf_modules.add(module_class)
    return module_class


def _registered_leaves_and_functions() -> tuple[tuple[type, ...], tuple[Callable, ...], tuple]:
    leaves: set[type] = set(_user_leaf_modules)
    functions: set[Callable] = set()
    modules: list = [math]
    if "timm" in sys.modules:
        from timm.layers import get_notrace_functions, get_notrace_modules

        leaves.update(get_notrace_modules())
        functions.update(f for f in get_notrace_functions() if callable(f))
    if "torchvision" in sys.modules:
        import torchvision.ops

        modules.append(torchvision.ops)
        leaves.update(
            obj
            for obj in vars(torchvision.ops).values()
            if isinstance(obj, type) and issubclass(obj, nn.Module)
        )
    return tuple(leaves), tuple(functions), tuple(modules)


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: tuple[type, ...], autowrap_functions, autowrap_modules):
        super().__init__(autowrap_modules=autowrap_modules, autowrap_functions=autowrap_functions)
        self.leaf_modules = leaf_modules
        self.failed_module: tuple[str, type] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_modules) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            # The innermost failing module is the first to see the exception.
            if self.failed_module is None:
                self.failed_module = (self.path_of_module(m), type(m))
            raise


def trace(
    model: nn.Module, *, training: bool, leaf_modules: Iterable[type[nn.Module]] = ()
) -> fx.GraphModule:
    """Trace ``model`` in train or eval mode into a GraphModule sharing its parameters.

    Example::

        gm = trace(model, training=False)
        [n.name for n in gm.graph.nodes][:3]

    fx resolves ``if self.training`` at trace time, so a model with train-only
    ops (drop-path, batch-norm statistics) gives two different graphs; trace both.
    The model's own mode is restored afterwards.
    """
    leaves, functions, modules = _registered_leaves_and_functions()
    tracer = _Tracer(leaves + tuple(leaf_modules), functions, modules)
    was_training = model.training
    model.train(training)
    try:
        graph = tracer.trace(model, concrete_args=_optional_arguments(model))
    except Exception as error:
        raise UntraceableModelError(_describe_failure(model, tracer, error)) from error
    finally:
        model.train(was_training)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _optional_arguments(model: nn.Module) -> dict[str, object]:
    """Defaults of ``forward``'s arguments after the input, fixed while tracing.

    Left symbolic, ``if mask is not None:`` would take the branch for a mask that
    never comes (hiera); fixed at its default, the branch follows what
    ``model(x)`` does.
    """
    parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    return {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _describe_failure(model: nn.Module, tracer: _Tracer, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if tracer.failed_module is None:
        return f"torch.fx cannot trace {type(model).__name__}: {reason}"
    path, cls = tracer.failed_module
    return (
        f"torch.fx cannot trace module '{path or '<root>'}' ({cls.__name__}) of "
        f"{type(model).__name__}: {reason}; mark it as a leaf with "
        f"partitioner.register_leaf_module({cls.__name__}) or "
        f"partition(..., leaf_modules=[{cls.__name__}])"
    )
