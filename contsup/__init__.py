"""contsup: greedy local learning with context supply for any timm model.

Example::

    import contsup, timm
    learner = contsup.wrap(timm.create_model("resnet32", num_classes=10), k=4, context="R1E")
    step = learner.local_backward(x, y)   # then optimizer.step()

Importing contsup registers the paper's CIFAR ResNets in timm
(``timm.create_model("resnet110", num_classes=10)``). ``contsup.distributed``
(pipelines over torch.distributed) and ``contsup.load`` (a model that ``contsup
export`` wrote, which takes images in [0, 1] unless exported with
``--normalized-input``) and ``contsup.plan`` (the fewest segments that fit a memory
budget, ``contsup.memory_plan``) are imported on first use.

The ``contsup`` console script starts without this module's imports
(``_contsup_launcher``): help and usage errors never wait for torch.
"""

import importlib

from contsup import models
from contsup.learner import LocalLearner, LocalStep, wrap

__all__ = ["LocalLearner", "LocalStep", "distributed", "load", "models", "plan", "wrap"]
__version__ = "0.3.0"


def __getattr__(name: str):
    # Imported on first use: torch.distributed's device mesh and the trainer are slow to import.
    if name == "distributed":
        return importlib.import_module("contsup.distributed")
    if name == "load":
        return importlib.import_module("contsup.runs").load
    if name == "plan":
        return importlib.import_module("contsup.memory_plan").plan
    raise AttributeError(f"module 'contsup' has no attribute {name!r}")
