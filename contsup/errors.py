"""The base of contsup's user-facing errors (the CLI reports them in one sentence, exit 2)."""

__all__ = ["ConfigError", "ContsupError"]


class ContsupError(ValueError):
    """Something the user asked for cannot be done; the message says what and how to fix it.

    Every user error is a subclass, raised where it is detected: the CLI catches these
    (and the partitioner's ``PartitionError``) only, so anything else is a bug and
    shows its traceback.
    """


class ConfigError(ContsupError):
    """An option's value is not one contsup accepts (a context mode, head, loss, design...)."""
