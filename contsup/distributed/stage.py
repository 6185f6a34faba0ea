"""One stage's units of a learner as a module of their own: what a rank owns.

Ownership is by module, not by name: the stage holds its units' modules
(``LocalLearner.unit``), and the learner's names for their parameters and state
are looked up once, so a stage saves under the names one process saves.
"""

from __future__ import annotations

import torch
from torch import nn

from contsup.learner import LocalLearner

__all__ = ["Stage"]


class Stage(nn.Module):
    """Units ``units`` of ``learner``, on ``device``; every other unit is freed (moved to
    the meta device, its shapes kept).

    Example::

        stage = Stage(learner, range(2, 4), torch.device("cuda"))
        stage.state_names              # ['network.segments.2.conv.weight', ...]
        optimizer = torch.optim.SGD([p for _, p in stage.named_learner_parameters], lr=0.1)

    Attributes:
        units: one ``ModuleList`` per unit (bridge, segment, head, decoder).
        state_names: the stage's entries of ``learner.state_dict()``, in its order.
        named_learner_parameters: its parameters, named and ordered as in
            ``learner.named_parameters()``.
    """

    def __init__(self, learner: LocalLearner, units: range, device: torch.device):
        super().__init__()
        self.units = nn.ModuleList(nn.ModuleList(learner.unit(j).modules()) for j in units)
        self.to(device)
        owned = {id(m) for m in self.modules()}
        for j in range(learner.k):  # other stages' units: freed, their shapes kept
            for module in learner.unit(j).modules():
                if id(module) not in owned:
                    module.to("meta")
        # Every stage un-normalises its images (the decoders' targets) itself.
        for name in ("mean", "std"):
            setattr(learner, name, getattr(learner, name).to(device))
        # The learner's names for the stage's entries, found by module identity; fixed
        # from here on (the hot path reads the parameters every step).
        where = {id(m): name for name, m in learner.named_modules()}
        entries = {
            f"{where[id(m)]}.{n}"
            for unit in self.units
            for m in unit
            for n in m.state_dict(keep_vars=True)
        }
        self.state_names = [n for n in learner.state_dict(keep_vars=True) if n in entries]
        self.named_learner_parameters = [
            (n, p) for n, p in learner.named_parameters() if n in entries
        ]
