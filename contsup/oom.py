"""Out of memory, said in one sentence: where it happened, what was predicted, what fits.

``local_units`` turns a CUDA out-of-memory error into ``StepOutOfMemory`` naming
the segment; the trainer adds the step, ``run_bench`` the configuration. The
command line then reports it with ``oom_sentence``, which asks the planner what
fits the device, instead of a traceback.

Example::

    try:
        train(config)
    except StepOutOfMemory as error:
        print(oom_sentence(error, model=config.model, batch_size=config.batch_size,
                           device_bytes=80 * 2**30, plan_options={"context": config.context}))
"""

from __future__ import annotations

from contsup.errors import ContsupError

__all__ = ["StepOutOfMemory", "oom_sentence"]


class StepOutOfMemory(ContsupError):
    """The device ran out of memory in a training step: in ``segment`` (None: not known),
    ``where`` (``at epoch 1, step 5``), with ``predicted_bytes`` if the caller knew them."""

    def __init__(
        self, segment: int | None = None, where: str = "", predicted_bytes: int | None = None
    ):
        self.segment = segment
        self.where = where
        self.predicted_bytes = predicted_bytes
        super().__init__(self.place())

    def place(self) -> str:
        """Where it happened, in words: ``segment 2 at epoch 1, step 5``."""
        if self.segment is None:
            return self.where or "a step"
        return f"segment {self.segment}{' ' + self.where if self.where else ''}"

    def at(self, where: str, predicted_bytes: int | None = None) -> StepOutOfMemory:
        """The same error, placed (``at epoch 1, step 5``); keeps the cause."""
        placed = StepOutOfMemory(self.segment, where, predicted_bytes or self.predicted_bytes)
        placed.__cause__ = self.__cause__
        return placed


def oom_sentence(
    error: StepOutOfMemory,
    *,
    model: str,
    batch_size: int,
    device_bytes: int,
    plan_options: dict,
    k: int | None = None,
    predicted_bytes: int | None = None,
) -> str:
    """One sentence: where memory ran out, the predicted peak, and what ``plan`` says fits.

    Example::

        oom_sentence(error, model="resnet50", batch_size=256, device_bytes=24 << 30,
                     plan_options={"context": "E"}, k=2, predicted_bytes=30 << 30)
    """
    from contsup.memory_plan import BudgetTooSmallError, format_bytes, plan

    predicted_bytes = predicted_bytes or error.predicted_bytes
    predicted = format_bytes(predicted_bytes) if predicted_bytes else "unknown"
    at_k = f" at K={k}," if k is not None else ""
    head = (
        f"out of memory in {error.place()} of {model}{at_k} batch {batch_size} "
        f"(predicted peak {predicted}, device {format_bytes(device_bytes)})"
    )
    try:
        fit = plan(model, memory=device_bytes, batch_size=batch_size, **plan_options)
    except BudgetTooSmallError:
        return f"{head}; `contsup plan` finds no K that fits batch {batch_size}: lower it"
    return (
        f"{head}; `contsup plan` says K={fit.k} fits batch {batch_size} "
        f"(or batch {fit.max_batch_size} at K={fit.k})"
    )
