"""Errors the partitioner raises for problems a user can fix, and its one warning."""

__all__ = ["PartitionError", "UntraceableModelError", "InputSizeError", "PartitionWarning"]


class PartitionError(ValueError):
    """A partition request that cannot be satisfied (bad K, tied weights, stale plan)."""


class UntraceableModelError(PartitionError):
    """torch.fx could not trace the model; the message names the module that failed."""


class InputSizeError(PartitionError):
    """The model rejected the example input's size."""


class PartitionWarning(UserWarning):
    """A partition was made, but not as asked: e.g. ``k`` forced a segment without parameters."""
