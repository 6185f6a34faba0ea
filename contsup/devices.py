"""Devices by name, checked before anything slow starts."""

from __future__ import annotations

from contsup.errors import ContsupError

__all__ = ["DeviceError", "check_device", "device_memory"]


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


def device_memory(device: str) -> int:
    """Bytes of memory on ``device``: the GPU's, or the machine's for ``cpu``.

    Example::

        device_memory("cuda:0")   # 85899345920 on an 80 GB GPU
    """
    import os

    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
