"""timm models by name, checked: what the command line and recipes ask for."""

from __future__ import annotations

import difflib

from torch import nn

from contsup.errors import ContsupError

__all__ = ["UnknownModelError", "check_model_name", "create_model", "list_model_names"]


class UnknownModelError(ContsupError):
    """A model name timm does not know, or a pattern no name matches."""


def check_model_name(name: str) -> None:
    """Raise UnknownModelError, with the closest names, unless timm knows ``name``.

    Example::

        check_model_name("resnet110")  # returns
        check_model_name("resnt110")   # unknown model 'resnt110'; did you mean resnet110, ...?
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `contsup models` lists them"
        raise UnknownModelError(f"unknown model '{name}'{hint}")


def create_model(name: str, *, meta: bool = True, input_size=None) -> nn.Module:
    """A timm model by name, built on the meta device when it allows (no memory, no init);
    for ``input_size`` (C, H, W) its stem takes C channels, as timm's ``in_chans``.

    Example::

        net = create_model("resnet20", input_size=(1, 28, 28))  # on the meta device
        net = create_model("resnet20", meta=False)               # real, initialised weights
    """
    import timm
    import torch

    check_model_name(name)
    kwargs = {"in_chans": input_size[0]} if input_size else {}
    if not meta:
        return timm.create_model(name, **kwargs)
    try:
        with torch.device("meta"):
            return timm.create_model(name, **kwargs)
    except Exception:  # some models compute Python numbers from tensors while building
        return timm.create_model(name, **kwargs)


def list_model_names(pattern: str) -> list[str]:
    """The timm model names ``pattern`` matches: a bare word anywhere in the name, as users
    type it ("resnet", "vit"), or a wildcard like ``resnet*``; UnknownModelError if none.

    Example::

        >>> list_model_names("resnet11")
        ['resnet110']
    """
    import timm

    wildcard = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = timm.list_models(wildcard)  # contsup's CIFAR ResNets are registered on import
    if not names:
        raise UnknownModelError(f"no model matches '{pattern}'")
    return names
