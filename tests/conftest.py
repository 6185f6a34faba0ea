import copy
import os

import pytest
import timm
import torch

import contsup  # noqa: F401  (registers the CIFAR ResNets in timm)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    # Under pytest-xdist (`make test`) each worker has a core of its own.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def twin(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy to compare a partition against (segments share the original)."""
    return copy.deepcopy(model)


def create(name: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, **kwargs)


def checkpoint_tensors(run_dir) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``run_dir``, by name."""
    from contsup.checkpoint import checkpoint_entries, load_checkpoint, load_tensors

    state = load_checkpoint(run_dir)
    tensors = {
        name: torch.empty(tuple(e.size), dtype=e.properties.dtype)
        for name, e in checkpoint_entries(run_dir, state).items()
    }
    load_tensors(run_dir, state, tensors)
    return tensors
