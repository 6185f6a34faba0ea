"""Does the loader keep up? Decoded images/s against trained images/s at 224 px.

Makes a JPEG folder in a temporary directory (``--images`` training images of
ImageNet's mean size, 500x375, in two classes), then measures:

- decoding: one epoch of ``imagefolder:`` batches as the trainer reads them
  (``train_parts``: decode, random-resized crop, flip, to the device), without
  workers and with ``--workers`` (the trainer's default, 4), timed after the
  first batch (the workers start once an epoch; that wait is printed apart);
- training: resnet50 at K=4 with R1E (``scaled``), ``local_backward`` and an SGD
  step on 224 px batches already in memory, ``--steps`` steps after one warm-up.

Both run with one thread per process. It prints both rates, their ratio, and
whether the loader keeps up (at least ``GOAL`` times the training rate); if it
does not, what bounds it and how many decoding cores would.

    OMP_NUM_THREADS=1 python benchmarks/data.py                  # CPU, short
    python benchmarks/data.py --device cuda --batch-size 64      # a GPU's training rate

Under torchrun each image is decoded once in the world, by the first pipeline
stage of the replica whose slice holds it (docs/distributed.md): the loader of
each replica then needs 1/dp of the rate the whole world trains at.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

GOAL = 1.5  # decoded over trained images/s for the loader to keep up


def make_folder(root: Path, images: int) -> None:
    """``images`` random-noise JPEGs of 500x375 under root/train and 8 under root/test."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", images), ("test", 8)):
        for i in range(count):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            # Smooth noise: JPEG-compressed like a photo, not like white noise.
            small = torch.randint(0, 256, (3, 47, 63), dtype=torch.uint8, generator=g)
            pixels = torch.nn.functional.interpolate(
                small[None].float(), (375, 500), mode="bilinear"
            )
            array = pixels[0].clamp(0, 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(array).save(folder / f"{i}.jpg", quality=90)


def decode_rate(root: Path, workers: int, batch_size: int, device: str) -> tuple[float, float]:
    """Training images/s that one epoch of ``imagefolder:root`` yields with ``workers``,
    after its first batch, and the seconds until that first batch (the workers' start,
    once an epoch)."""
    from contsup.data import Part, load_dataset

    name = f"imagefolder:{root}"
    data = load_dataset(name, batch_size=batch_size, device=device, workers=workers)
    started = time.perf_counter()
    parts = data.train_parts(torch.Generator().manual_seed(0), Part())
    next(parts)
    first = time.perf_counter()
    seen = sum(len(part.y) for part in parts)
    return seen / (time.perf_counter() - first), first - started


def train_rate(batch_size: int, steps: int, device: str) -> float:
    """Images/s of resnet50 K=4 R1E training steps on 224 px batches in memory."""
    import timm

    from contsup.learner import wrap

    torch.manual_seed(0)
    model = timm.create_model("resnet50", num_classes=1000)
    learner = wrap(model, 4, context="R1E", example_input=torch.zeros(2, 3, 224, 224)).to(device)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        learner.local_backward(x, y)
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="training JPEGs to decode")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (as train)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_folder(root, args.images)
        one, _ = decode_rate(root, 0, args.batch_size, args.device)
        many, start = decode_rate(root, args.workers, args.batch_size, args.device)
    trained = train_rate(args.batch_size, args.steps, args.device)
    ratio = many / trained
    print(f"cores: {cores}, device: {args.device}, batch {args.batch_size}, 224 px")
    print(f"decoded  (1 process, no workers): {one:8.1f} images/s")
    print(
        f"decoded  ({args.workers} workers):            {many:8.1f} images/s "
        f"(after the first batch, {start:.1f} s: the workers' start, once an epoch)"
    )
    print(f"trained  (resnet50 K=4 R1E):       {trained:8.1f} images/s")
    print(f"decoded / trained: {ratio:.1f}x (goal: at least {GOAL}x)")
    if ratio >= GOAL:
        print(f"the loader keeps up at {args.workers} workers")
        return
    needed = math.ceil(GOAL * trained / one)
    bound = "cores" if args.workers >= cores else "workers"
    print(
        f"the loader does not keep up: it is bound by its {bound} ({args.workers} workers on "
        f"{cores} cores, {one:.0f} images/s per decoding core); {GOAL}x the training rate "
        f"needs about {needed} decoding cores (--workers {needed} on {needed} free cores, "
        "or fewer replicas sharing a machine's cores)"
    )


if __name__ == "__main__":
    main()
