"""From a ``TrainConfig`` to the things a run trains: the device, the data, the learner.

``build`` gives a run's data and wrapped model; ``build_learner`` the model alone
(what saved runs rebuild); ``plan_cuts`` reads the cuts of a ``contsup split
--save`` plan; ``resolve_device`` and ``default_threads`` choose where and on how
many CPU threads a run computes.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch

from contsup.config import TrainConfig
from contsup.data import Batches, DatasetInfo, load_dataset
from contsup.data.augment import use_timm_augment
from contsup.distributed import launched
from contsup.errors import ConfigError, ContsupError
from contsup.learner import LocalLearner, wrap
from partitioner import PartitionError
from partitioner.plan import read_plan

__all__ = [
    "PlanError",
    "build",
    "build_learner",
    "config_cuts",
    "cut_nodes",
    "default_threads",
    "plan_cuts",
    "resolve_device",
]


class PlanError(ContsupError):
    """A plan file that cannot be used for this run."""


def default_threads() -> int:
    """CPU threads for a run: this process's share of the cores that are idle now.

    Example::

        torch.set_num_threads(default_threads())

    torch's own default (every core) slows a run several-fold when another process
    is busy on the machine: threads then wait for each other. Under torchrun the
    cores are shared by the processes of one machine. Results repeat exactly only
    at the same thread count, so runs print theirs and ``--threads`` fixes it.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, (max(1, (cores or 1) - busy)) // per_machine)


def resolve_device(name: str) -> torch.device:
    """The device a run (or, under torchrun, this rank) uses: ``auto`` takes CUDA if any.

    Example::

        resolve_device("auto")   # device(type='cuda', index=LOCAL_RANK) under torchrun on GPUs
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and launched():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def plan_cuts(path: str | Path, model: str, image_size: tuple[int, ...]) -> list[str]:
    """The cut nodes of a plan that ``contsup split --save`` wrote, checked against the run.

    Example::

        cuts = plan_cuts("plan.json", "resnet110", (3, 32, 32))

    The plan is JSON (never code). It must name the same model, if it names one,
    and have been made for the same input size.
    """
    try:
        plan = read_plan(Path(path).read_text())
    except OSError as error:
        raise PlanError(f"cannot read plan {path}: {error.strerror}") from error
    except PartitionError as error:
        raise PlanError(f"{path} is not a plan written by `contsup split --save`") from error
    if (plan.model or model) != model:
        raise PlanError(f"{path} is a plan for {plan.model}, not {model}")
    shape = plan.input_shape[1:]
    if shape != tuple(image_size):
        raise PlanError(f"{path} was made for inputs of shape {shape}, not {tuple(image_size)}")
    if any(len(c) != 1 for c in plan.cuts):
        raise PlanError(f"{path} has multi-tensor cuts, which local learning cannot use")
    return [c[0] for c in plan.cuts]


def build(config: TrainConfig) -> tuple[LocalLearner, Batches, torch.device]:
    """The data (on its device) and the wrapped model (on the CPU, until a ``Pipeline``
    moves each rank's share) that a config describes.

    Example::

        learner, data, device = build(TrainConfig(model="resnet20", dataset="digits"))
    """
    device = resolve_device(config.device)
    data = load_dataset(
        config.dataset,
        batch_size=config.batch_size,
        device=device,
        data_dir=config.data_dir,
        download=config.download,
        workers=config.workers,
    )
    data.take(config.train_images, config.test_images)
    use_timm_augment(data, config.augment, config.random_erasing)
    learner = build_learner(config, data.info)
    if config.channels_last:
        learner.to(memory_format=torch.channels_last)
    if config.compile:
        learner.compile_units()
    return learner, data, device


def config_cuts(config: TrainConfig, info: DatasetInfo) -> list[str] | None:
    """The cuts ``config`` names, directly or through its plan; None: balance into K.

    Example::

        config_cuts(TrainConfig(model="resnet20", plan="plan.json"), info)  # the plan's cuts
    """
    if config.plan is None:
        return config.cuts
    if config.cuts is not None:
        raise ConfigError("give cuts or a plan, not both")
    return plan_cuts(config.plan, config.model, tuple(info.image_size))


def build_learner(
    config: TrainConfig, info: DatasetInfo, cuts: list[str] | None = None
) -> LocalLearner:
    """The wrapped model ``config`` describes for data like ``info``, on the CPU.

    Example::

        learner = build_learner(TrainConfig(model="resnet20", k=4), parse_dataset("digits")[0])

    ``cuts`` (the nodes a run cut after, as its checkpoint records them) replace
    the config's K, cuts and plan: the same segments without re-balancing.
    """
    # timm's convention: in_chans follows the data unless model_kwargs sets it.
    kwargs = {"in_chans": info.image_size[0], **config.model_kwargs}
    model = timm.create_model(config.model, num_classes=info.num_classes, **kwargs)
    example = torch.zeros(2, *info.image_size)
    if cuts is None:
        cuts = config_cuts(config, info)
    learner = wrap(
        model,
        None if cuts is not None else config.k,  # with cuts, K follows from them
        cuts=cuts,
        context=config.context,
        aux=config.aux,
        local_loss=config.local_loss,
        head=config.head,
        decoder=config.decoder,
        momentum_heads=config.momentum_heads,
        objective=config.objective,
        example_input=example,
    )
    learner.mean.copy_(torch.tensor(info.mean).view_as(learner.mean))
    learner.std.copy_(torch.tensor(info.std).view_as(learner.std))
    return learner


def cut_nodes(learner: LocalLearner) -> list[str]:
    """The graph nodes ``learner`` is cut after, as ``wrap(cuts=...)`` takes them.

    Example::

        build_learner(config, info, cuts=cut_nodes(learner))   # the same segments again
    """
    return [b.tensors[0].node for b in learner.partition.boundaries]
