"""One rank of a training run on an image folder, logging every image it decodes.

Run by ``test_sharded_input.py`` as one process or as WORLD ranks (RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the environment), from the repository:
``python -m tests.contsup.distributed.decode_worker FOLDER RUN LOGS PIPELINE [MODE]``.
Each rank appends the path of every image it decodes to LOGS/rank<R>.txt. MODE:
``run`` (the default), ``stop`` (killed after step 3, with a step checkpoint every
2 steps; one process only), ``resume``, or ``decoder`` (a run with reconstruction
decoders, whose target travels down the pipe too).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from timm.models import register_model
from torch import nn

from contsup.data import imagefolder, register_dataset
from contsup.trainer import TrainConfig, train
from tests.contsup.distributed.pipeline_worker import Plain

SIZE = (3, 32, 32)  # small images: the run is about who decodes, not about learning


@register_model
def decode_test_plain(pretrained=False, num_classes=10, in_chans=3, **kwargs):
    """The pipeline tests' CNN without batch norm: replicas agree with one process."""
    model = Plain()
    model.fc, model.num_classes = nn.Linear(16, num_classes), num_classes
    return model


class Logged:
    """An image loader that appends each path it opens to ``log`` (picklable, so
    DataLoader workers log too)."""

    def __init__(self, load, log: Path):
        self.load, self.log = load, log

    def __call__(self, path: str):
        with open(self.log, "a") as log:
            log.write(f"{path}\n")
        return self.load(path)


def counted_folder(logs: Path):
    """Register ``counted:PATH``: ``imagefolder:PATH`` at 32 px, every decode logged."""
    log = logs / f"rank{os.environ.get('RANK', '0')}.txt"

    def variant(name: str, argument: str):
        info, source = imagefolder._folder(name, argument)
        return replace(info, image_size=SIZE), source

    def load(info, source, options):
        data = imagefolder._load(info, source, options)
        for dataset in (data.train_set, data.test_set):
            dataset.loader = Logged(dataset.loader, log)
        return data

    register_dataset("counted", load, variant=variant, usage="counted:PATH")


def run_config(folder: str, run: str, pipeline: int, mode: str) -> TrainConfig:
    """The run MODE trains (``counted:FOLDER`` must be registered to train it)."""
    return TrainConfig(
        model="decode_test_plain",
        # K=2: the second stage's R1E bridge reads the image, so it travels too. With
        # decoders, K=4: the second stage starts with a unit that has one.
        k=4 if mode == "decoder" else 2,
        context="R1E",
        head="0c2f",
        # BatchNorm-free bridges (the thin ones): replicas that see other images then
        # keep the same weights as one process, which the tests compare.
        aux="scaled",
        dataset=f"counted:{folder}",
        batch_size=6,
        epochs=2,
        lr=0.05,
        warmup_epochs=0,
        device="cpu",
        threads=1,
        workers=0,
        pipeline=pipeline,
        pipeline_balance="cost",
        tensorboard=False,
        checkpoint_every=2 if mode == "stop" else None,
        decoder=[1.0, 1.0, 0.5, 1.0] if mode == "decoder" else None,
        out=run,
    )


def main() -> None:
    folder, run, logs, pipeline = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else "run"
    Path(logs).mkdir(parents=True, exist_ok=True)
    counted_folder(Path(logs))
    config = run_config(folder, run, int(pipeline), mode)

    def killed(step, *_):  # as a SIGKILL after step 3 would: the last checkpoint is step 2's
        if step == 3:
            raise KeyboardInterrupt

    try:
        train(config, resume=mode == "resume", on_step=killed if mode == "stop" else None)
    except KeyboardInterrupt:
        sys.exit(3)


if __name__ == "__main__":
    main()
