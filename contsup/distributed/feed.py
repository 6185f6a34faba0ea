"""What a pipeline stage reads of each batch besides the carry, so what it is sent.

Only the first stage of each replica loads the replica's slice of every batch
(``data_part``); it sends the rest down the pipe with the carry: the labels
always (every stage's heads score them), the normalised image only as far as a
unit still reads it (``E`` bridges, and ``Rn`` bridges for which the image stands
in for a boundary that does not exist yet), the un-normalised image only as far
as a reconstruction decoder reads it. So each image is decoded once in the world.
"""

from __future__ import annotations

from dataclasses import dataclass

from contsup.context import recent_sources
from contsup.data.parts import BatchPart, Part
from contsup.distributed.layout import Layout
from contsup.learner import LocalLearner

__all__ = ["Needs", "data_part"]


def data_part(layout: Layout) -> Part:
    """The part of every batch ``layout``'s rank loads: its replica's slice on the
    first stage, nothing on later ones.

    Example::

        >>> data_part(Layout(range(0, 4), (0, 4))), data_part(Layout(range(2, 4), (0, 2, 4), 1, 2))
        (Part(index=0, count=1, loads=True), Part(index=0, count=1, loads=False))
    """
    return Part(layout.replica, layout.replicas, loads=layout.first)


@dataclass(frozen=True)
class Needs:
    """Whether some unit reads the normalised image (``image``) and the un-normalised
    one (``raw``, a reconstruction decoder's target).

    Example::

        Needs.after(learner, pipe.units).image   # does a later stage read the image?
    """

    image: bool = False
    raw: bool = False

    @classmethod
    def after(cls, learner: LocalLearner, units: range) -> Needs:
        """What the units after ``units`` (later pipeline stages) read."""
        later = range(units.stop, learner.k)
        mode = learner.context
        image = any(mode.image or -1 in recent_sources(j - 1, mode) for j in later)
        raw = any(learner.unit(j).decoder is not None for j in later)
        return cls(image, raw)

    def sent(self, part: BatchPart, learner: LocalLearner) -> BatchPart:
        """What of ``part`` goes to the next stage: the labels, and the images read later
        (the decoders' target made from ``x`` when the data gave none, as
        ``LocalLearner.local_units`` would)."""
        raw = part.raw
        if self.raw and raw is None:
            raw = learner.raw_of(part.x)
        return BatchPart(
            part.x if self.image else None, part.y, raw if self.raw else None, part.total
        )
