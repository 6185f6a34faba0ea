"""contsup: greedy local learning with context supply for any timm model.

Importing contsup registers the paper's CIFAR ResNets in timm
(``timm.create_model("resnet110", num_classes=10)``).
"""

from contsup import models

__all__ = ["models"]
__version__ = "0.1.0"
