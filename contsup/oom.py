"""Out of memory, said in one sentence: where it happened, what was predicted, what fits.

``local_units`` turns a CUDA out-of-memory error into ``StepOutOfMemory`` naming
the segment; the trainer adds the step, ``run_bench`` the configuration. The
command line then reports it with ``contsup.memory_plan.oom_sentence``, which asks
the planner what fits the device, instead of a traceback.

Example::

    try:
        train(config)
    except StepOutOfMemory as error:
        print(oom_sentence(error, model=config.model, batch_size=config.batch_size,
                           device_bytes=80 * 2**30, plan_options={"context": config.context}))
"""

from __future__ import annotations

from contsup.errors import ContsupError

__all__ = ["StepOutOfMemory"]


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
