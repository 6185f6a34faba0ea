"""contsup.losses: the supervised contrastive loss against its definition."""

import itertools

import torch
import torch.nn.functional as F

from contsup.losses import supervised_contrastive


def test_supervised_contrastive_matches_its_definition():
    """Reference: the per-anchor loss is averaged over all anchors of the batch; an
    anchor without a positive (class 2 here) contributes 0."""
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 0, 1, 2, 0])
    n = F.normalize(z, dim=1)
    terms = []
    for i, j in itertools.product(range(6), range(6)):
        if i != j and y[i] == y[j]:
            denominator = sum(torch.exp(n[i] @ n[a] / 0.07) for a in range(6) if a != i)
            terms.append((i, torch.log(torch.exp(n[i] @ n[j] / 0.07) / denominator)))
    per_anchor = [
        torch.stack([t for a, t in terms if a == i]).mean()
        if any(a == i for a, _ in terms)
        else torch.tensor(0.0)
        for i in range(6)
    ]
    expected = -torch.stack(per_anchor).sum() / 6
    assert torch.allclose(supervised_contrastive(z, y), expected, atol=1e-5)
