"""The data package's user errors (the CLI reports them in one sentence, exit 2)."""

from contsup.errors import ContsupError

__all__ = ["DataError", "UnknownDatasetError"]


class DataError(ContsupError):
    """A dataset that is missing, malformed or unknown; the message says how to fix it."""


class UnknownDatasetError(DataError):
    """A dataset name no loader registered."""
