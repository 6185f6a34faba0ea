"""The base of contsup's user-facing errors (the CLI reports them in one sentence, exit 2)."""

__all__ = ["ContsupError"]


class ContsupError(ValueError):
    """Something the user asked for cannot be done; the message says what and how to fix it."""
