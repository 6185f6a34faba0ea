"""Models contsup registers in timm (importing this package registers them)."""

from contsup.models.cifar_resnet import CIFAR_RESNET_DEPTHS, BasicBlock, CifarResNet

__all__ = ["CIFAR_RESNET_DEPTHS", "BasicBlock", "CifarResNet"]
