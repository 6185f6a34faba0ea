"""One rank of a pipelined run, checked against one process on the same rank.

Run by ``test_pipeline.py`` as WORLD processes (RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT in the environment), from the repository:
``python -m tests.contsup.distributed.pipeline_worker OUT P...``.
For each pipeline size P (the rest of the world is data parallel) and each
context mode, every rank trains a pipelined learner and, by itself, a copy with
``LocalLearner.local_backward``; it writes what it compared to OUT/rank<R>.json.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

import contsup  # noqa: F401  (registers the CIFAR ResNets in timm)
from contsup.distributed import pipeline
from contsup.learner import wrap

BATCHES = [16, 16, 5]  # the last one partial
IMAGE = (3, 16, 16)


class Plain(nn.Module):
    """A CNN without batch norm: data-parallel replicas agree with one process."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def batches(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, *IMAGE, generator=g), torch.randint(0, 10, (n,), generator=g))
        for n in sizes
    ]


def train_losses(local_backward, params, train) -> list[list[float]]:
    """Step an SGD over ``params`` after each ``local_backward(x, y)``; its losses."""
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    losses = []
    for x, y in train:
        optimizer.zero_grad()
        losses.append(local_backward(x, y).losses)
        optimizer.step()
    return losses


def reference(learner, train, test):
    """One process: LocalLearner.local_backward and the inference model."""
    losses = train_losses(learner.local_backward, learner.parameters(), train)
    learner.eval()
    with torch.no_grad():
        correct = sum((learner(x).argmax(1) == y).sum().item() for x, y in test)
    learner.train()
    return losses, correct / sum(len(y) for _, y in test)


def check(mesh, name: str, exact: bool) -> dict:
    context, momentum, _ = name.partition("+momentum")  # R1E+momentum: momentum heads
    torch.manual_seed(0)
    model = timm.create_model("resnet20", num_classes=10) if exact else Plain()
    # Replicas agree with one process only without batch norm: heads without convolutions,
    # and scaled's thin bridges (the default's at 16 px are the paper's, with BatchNorm).
    head, aux = ("1c2f", "sized") if exact else ("0c2f", "scaled")
    learner = wrap(
        model, 4, context=context, head=head, aux=aux, example_input=torch.zeros(2, *IMAGE),
        momentum_heads=0.9 if momentum else None,
    )  # fmt: skip
    twin = copy.deepcopy(learner)
    train, test = batches(BATCHES, 1), batches([16, 7], 2)
    ref_losses, ref_accuracy = reference(twin, train, test)

    pipe = pipeline(learner, mesh)
    losses = train_losses(pipe.local_backward, pipe.parameters(), train)
    pipe.flush()
    accuracy = pipe.evaluate(test).accuracy

    mine = pipe.state_dict()
    theirs = {n: t for n, t in twin.state_dict().items() if n in mine}
    if exact:
        same = [torch.equal(mine[n], theirs[n]) for n in mine]
        ref_units = [[row[j] for j in pipe.units] for row in ref_losses]
        return {
            "units": list(pipe.units),
            "tensors": len(mine),
            "state_equal": all(same),
            "losses_equal": losses == ref_units,
            "accuracy_equal": accuracy == ref_accuracy,
        }
    gap = max((mine[n] - theirs[n]).abs().max().item() for n in mine)
    return {
        "units": list(pipe.units),
        "tensors": len(mine),
        "max_gap": gap,
        "accuracy": accuracy,
        "ref_accuracy": ref_accuracy,
    }


def replica_buffers(mesh) -> dict:
    """Batch-norm statistics of this stage after data-parallel steps and an evaluation
    (which starts from replica 0's, as every step does), as exact sums."""
    torch.manual_seed(0)
    model = timm.create_model("resnet20", num_classes=10)
    learner = wrap(model, 4, context="R1E", example_input=torch.zeros(2, *IMAGE))
    pipe = pipeline(learner, mesh)
    train_losses(pipe.local_backward, pipe.parameters(), batches(BATCHES, 1))
    pipe.flush()
    pipe.evaluate(batches([16, 7], 2))
    state = pipe.state_dict()
    names = [n for n in state if "running_" in n]
    return {"units": list(pipe.units), "buffers": [state[n].double().sum().item() for n in names]}


def main() -> None:
    out, sizes = Path(sys.argv[1]), [int(v) for v in sys.argv[2:]]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, results = dist.get_world_size(), {}
    for stages in sizes:
        mesh = init_device_mesh("cpu", (world // stages, stages), mesh_dim_names=("dp", "pp"))
        exact = world == stages  # one replica: bitwise; several: BN-free, within tolerance
        for context in ("R0", "E", "R1E", "R2E", "R1E+momentum") if exact else ("R1E",):
            results[f"P{stages}-{context}"] = check(mesh, context, exact)
        if not exact:
            results[f"buffers-P{stages}"] = replica_buffers(mesh)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
