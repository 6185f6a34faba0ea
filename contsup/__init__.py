"""contsup: greedy local learning with context supply for any timm model.

Example::

    import contsup, timm
    learner = contsup.wrap(timm.create_model("resnet32", num_classes=10), k=4, context="R1E")
    step = learner.local_backward(x, y)   # then optimizer.step()

Importing contsup registers the paper's CIFAR ResNets in timm
(``timm.create_model("resnet110", num_classes=10)``).
"""

from contsup import models
from contsup.learner import LocalLearner, LocalStep, wrap

__all__ = ["LocalLearner", "LocalStep", "models", "wrap"]
__version__ = "0.1.0"
