"""contsup: greedy local learning with context supply for any timm model.

Example::

    import contsup, timm
    learner = contsup.wrap(timm.create_model("resnet32", num_classes=10), k=4, context="R1E")
    step = learner.local_backward(x, y)   # then optimizer.step()

Importing contsup registers the paper's CIFAR ResNets in timm
(``timm.create_model("resnet110", num_classes=10)``). ``contsup.distributed``
(pipelines over torch.distributed) is imported on first use.
"""

import importlib

from contsup import models
from contsup.learner import LocalLearner, LocalStep, wrap

__all__ = ["LocalLearner", "LocalStep", "distributed", "models", "wrap"]
__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "distributed":  # torch.distributed's device mesh is slow to import
        return importlib.import_module("contsup.distributed")
    raise AttributeError(f"module 'contsup' has no attribute {name!r}")
