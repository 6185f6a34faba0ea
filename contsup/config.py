"""``TrainConfig``: everything a run needs, and what each field means to a saved run.

Each field declares its role in its metadata: ``identity`` fields make a different
run when changed (a resume with another value is refused), ``rebuild`` fields shape
the inference model (an export records them to rebuild it). ``IDENTITY`` and
``REBUILD`` are derived from the fields, so a new field states its role once.
This module imports no training machinery: recipes and saved runs read it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contsup.data import DEFAULT_DATA_DIR

__all__ = ["IDENTITY", "REBUILD", "TrainConfig"]

_IDENTITY = {"identity": True}  # changing it between a checkpoint and its resume: another run
_MODEL = {"identity": True, "rebuild": True}  # also shapes the exported inference model


@dataclass
class TrainConfig:
    """Everything a run needs; defaults follow the paper (docs/paper.md) where it has one.

    Example::

        config = TrainConfig(model="resnet20", k=4, dataset="digits", epochs=5)
        config.out_dir()   # runs/resnet20-k4-E-digits
    """

    model: str = field(default="resnet32", metadata=_MODEL)
    k: int = field(default=4, metadata=_IDENTITY)
    context: str = field(default="E", metadata=_MODEL)
    aux: str = field(default="sized", metadata=_MODEL)
    head: str = field(default="1c2f", metadata=_MODEL)
    local_loss: str = field(default="ce", metadata=_MODEL)
    decoder: list[float] | None = field(default=None, metadata=_MODEL)
    # a decay (0.99): heads that look through the next segment's shadow; "off" (or None):
    # plain heads; "auto": 0.99 where the network is small (contsup.momentum_heads)
    momentum_heads: float | str | None = field(default="auto", metadata=_MODEL)
    objective: str = field(default="flops", metadata=_IDENTITY)
    cuts: list[str] | None = field(default=None, metadata=_IDENTITY)
    plan: str | None = field(default=None, metadata=_IDENTITY)
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata=_MODEL)
    dataset: str = field(default="digits", metadata=_IDENTITY)
    train_images: int | None = field(default=None, metadata=_IDENTITY)
    test_images: int | None = field(default=None, metadata=_IDENTITY)
    data_dir: str = DEFAULT_DATA_DIR
    download: bool = False
    workers: int = 4
    epochs: int = field(default=160, metadata=_IDENTITY)
    batch_size: int = field(default=1024, metadata=_IDENTITY)
    lr: float = field(default=0.8, metadata=_IDENTITY)
    momentum: float = field(default=0.9, metadata=_IDENTITY)
    nesterov: bool = field(default=True, metadata=_IDENTITY)
    weight_decay: float = field(default=1e-4, metadata=_IDENTITY)
    # per step; "paper": the reference's per-epoch curve
    schedule: str = field(default="cosine", metadata=_IDENTITY)
    # None: a sixteenth of the run (the paper's 10 of 160)
    warmup_epochs: float | None = field(default=None, metadata=_IDENTITY)
    # "sgd": the paper's (torch SGD, decay on every weight); any other: timm's factory
    optimizer: str = field(default="sgd", metadata=_IDENTITY)
    # None: the dataset's own crop-and-flip; "timm" or a timm auto-augment policy
    # ("rand-m9-mstd0.5-inc1", "trivialaugment", "augmix-m5", "original"): timm's transform
    augment: str | None = field(default=None, metadata=_IDENTITY)
    random_erasing: float = field(default=0.0, metadata=_IDENTITY)  # timm's re_prob
    mixup: float = field(default=0.0, metadata=_IDENTITY)  # mixup alpha; 0: off
    cutmix: float = field(default=0.0, metadata=_IDENTITY)  # cutmix alpha; 0: off
    label_smoothing: float = field(default=0.0, metadata=_IDENTITY)
    device: str = "auto"
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    seed: int = field(default=0, metadata=_IDENTITY)
    out: str | None = None
    pipeline: int = 1
    pipeline_balance: str = "time"
    tensorboard: bool | None = None  # None: when the tensorboard package is installed
    threads: int | None = None  # CPU threads; None: the idle cores (``default_threads``)
    checkpoint_every: int | None = None  # a step checkpoint every N optimizer steps; None: off

    def out_dir(self) -> Path:
        """The run directory: ``out``, or one under ``runs/`` named after the run."""
        name = f"{self.model}-k{self.k}-{self.context}-{self.dataset.replace(':', '_')}"
        return Path(self.out or Path("runs") / name)


def _with(role: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainConfig) if f.metadata.get(role))


# The fields a resume must match, in the order a refusal names the first changed one.
IDENTITY = _with("identity")
# The fields that shape the inference model (with the cuts and the data's shape).
REBUILD = _with("rebuild")
