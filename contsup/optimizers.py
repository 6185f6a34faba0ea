"""The optimizer of a run: the paper's SGD, or any of timm's by name.

``sgd`` (the default) is the paper's: torch's SGD, Nesterov momentum, weight decay on
every weight. Any other name goes to ``timm.optim.create_optimizer_v2`` (``adamw``,
``lamb``, ``nesterov``, ``momentum``, ``lion``, ...; ``timm.optim.list_optimizers()``),
with weight decay off for biases and norm weights (every parameter of one dimension)
and for the names the model's ``no_weight_decay()`` lists, as timm's
``filter_bias_and_bn`` does. LAMB's clipping by the global gradient norm is off:
each segment learns from its own loss, and under a pipeline each stage steps only
its own parameters, so a norm over all of them would make a pipelined run differ
from one process.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

from contsup.errors import ConfigError

__all__ = [
    "PAPER_OPTIMIZER",
    "check_optimizer",
    "fused_step",
    "make_optimizer",
    "weight_decay_groups",
]

PAPER_OPTIMIZER = "sgd"


def check_optimizer(name: str) -> None:
    """Raise ``ConfigError`` (one sentence) unless ``name`` is ``sgd`` or one of timm's.

    Example::

        check_optimizer("adamw")   # fine
        check_optimizer("adamx")   # ConfigError naming the closest of timm's names
    """
    if name == PAPER_OPTIMIZER:
        return
    import difflib

    from timm.optim import list_optimizers

    names = list_optimizers()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"unknown optimizer {name!r}; {hint}use sgd (the paper's) or a name from "
            "timm.optim.list_optimizers() such as adamw or lamb"
        )


def weight_decay_groups(
    named_parameters: Sequence[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_weight_decay: Collection[str] = (),
) -> list[dict]:
    """timm's two parameter groups: no decay for biases, norm weights and the names in
    ``no_weight_decay`` (a ViT's ``pos_embed``, ``cls_token``), decay for the rest.

    Example::

        groups = weight_decay_groups(learner.named_parameters(), 0.05, learner.no_weight_decay())
        [len(g["params"]) for g in groups]   # [no decay, decay]
    """
    no_decay, decay = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            exempt = param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay
            (no_decay if exempt else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def fused_step(params: Sequence[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` where torch has a fused step for every parameter's device and
    dtype (CUDA, CPU, ...), else ``{}``: the keyword arguments of a torch optimizer
    (SGD, Adam, AdamW) that step all its parameters in a few kernels, not one loop per tensor.

    Example::

        torch.optim.SGD(params, lr=0.1, momentum=0.9, **fused_step(params))

    torch's own default steps parameter by parameter on the CPU, and with ``foreach``
    on CUDA; the fused step gives the loop's values within float rounding (it fuses
    multiply-adds), so a run's numbers move in the last bits, not more.
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    fusable = all(p.device.type in devices and p.is_floating_point() for p in params)
    return {"fused": True} if params and fusable else {}


def make_optimizer(
    name: str,
    named_parameters: Sequence[tuple[str, nn.Parameter]],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    no_weight_decay: Collection[str] = (),
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``named_parameters`` (a pipeline stage's, or a learner's).

    Example::

        optimizer = make_optimizer("adamw", learner.named_parameters(), lr=1e-3,
                                   momentum=0.9, nesterov=True, weight_decay=0.05)

    ``momentum`` and ``nesterov`` shape the paper's SGD; timm's SGD variants take
    ``momentum`` and choose Nesterov by name (``nesterov`` or ``momentum``).
    ``no_weight_decay``: names that timm's optimizers leave undecayed, as
    ``LocalLearner.no_weight_decay()`` gives them.
    """
    check_optimizer(name)
    params = [p for _, p in named_parameters]
    if name == PAPER_OPTIMIZER:
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            **fused_step(params),
        )
    import inspect

    from timm.optim import create_optimizer_v2, get_optimizer_class

    groups = weight_decay_groups(named_parameters, weight_decay, no_weight_decay)
    options = {}
    accepted = inspect.signature(get_optimizer_class(name, bind_defaults=False)).parameters
    if "max_grad_norm" in accepted:
        # LAMB clips by the norm of every gradient it steps: that would couple the
        # gradient-isolated segments, and a pipeline stage sees only its own gradients.
        options["max_grad_norm"] = None
    if "fused" in accepted:  # torch's SGD, Adam, AdamW under timm's names; timm's own
        options.update(fused_step(params))  # (LAMB, Lion) take foreach by themselves
    return create_optimizer_v2(
        groups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum, **options
    )
