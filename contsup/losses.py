"""Local losses: cross-entropy and supervised contrastive (SupCon)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contsup.errors import ConfigError

__all__ = ["LOCAL_LOSSES", "supervised_contrastive", "local_loss_fn", "head_outputs"]

LOCAL_LOSSES = ("ce", "contrast")
CONTRAST_DIM = 128


def supervised_contrastive(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on L2-normalised features, one view per sample.

    Example::

        loss = supervised_contrastive(torch.randn(8, 128), torch.randint(0, 2, (8,)))

    For each anchor, the other samples of its class are positives and every other
    sample is in the denominator. As in the reference implementation, the mean is
    over all anchors of the batch: an anchor without a positive contributes 0.
    """
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(1) / counts.clamp(min=1)
    return -per_anchor.mean()


def head_outputs(local_loss: str, num_classes: int) -> int:
    """Width of a local head's output: class logits, or contrastive features."""
    check_local_loss(local_loss)
    return num_classes if local_loss == "ce" else CONTRAST_DIM


def check_local_loss(local_loss: str) -> None:
    if local_loss not in LOCAL_LOSSES:
        raise ConfigError(
            f"unknown local loss {local_loss!r}; use 'ce' (cross-entropy) or 'contrast' (SupCon)"
        )


def local_loss_fn(local_loss: str):
    """The loss function a local head's output is scored with."""
    check_local_loss(local_loss)
    if local_loss == "ce":
        return lambda out, y: F.cross_entropy(out.float(), y)
    return supervised_contrastive
