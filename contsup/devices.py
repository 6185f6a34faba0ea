"""Devices by name, checked before anything slow starts."""

from __future__ import annotations

from contsup.errors import ContsupError

__all__ = ["DeviceError", "check_device"]


class DeviceError(ContsupError):
    """A device this machine does not have."""


def check_device(device: str) -> None:
    """Raise DeviceError when a CUDA device is asked for on a machine without one.

    Example::

        >>> check_device("cpu")
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device} asked for, but this machine has no CUDA GPU")
