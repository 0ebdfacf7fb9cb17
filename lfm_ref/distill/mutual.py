"""Online distillation: deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018).

Chapter: notebooks/07_classic_distillation.ipynb

No pretrained teacher: K peers train together, and each also matches the others' predictions,

    L_k = CE(p_k, y) + 1/(K-1) * sum_{l != k} KL(p_l || p_k) ,

with the other peers' p_l treated as constants. The paper updates the peers in turn; here all K
losses are summed and stepped at once, which gives each peer exactly its own gradient of L_k
(the p_l are detached), a common simultaneous variant.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks


class Cohort(nn.Module):
    """K peer networks trained together; ``forward`` returns their logits stacked, ``(K, B, classes)``."""

    def __init__(self, peers: Sequence[nn.Module]):
        super().__init__()
        peers = checks.non_empty(peers, "peers")
        for i, peer in enumerate(peers):
            checks.module(peer, f"peers[{i}]")
        if len(peers) < 2:
            raise ValueError(f"mutual learning needs at least 2 peers, got {len(peers)}")
        self.peers = nn.ModuleList(peers)

    def forward(self, x):
        return torch.stack([peer(x) for peer in self.peers])  # (K, B, classes)


def mutual_learning_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over peers of L_k, from stacked logits ``(K, B, classes)`` and labels ``(B,)``."""
    checks.tensor(logits, "logits", dim=3, floating=True)
    if logits.shape[0] < 2:
        raise ValueError(f"logits must stack K >= 2 peers as (K, batch, classes), got {tuple(logits.shape)}")
    checks.class_indices(targets, "targets", logits.shape[-1])
    checks.same_shape(targets, logits[0, :, 0], "targets", "one label per example")
    K = logits.shape[0]
    log_p = F.log_softmax(logits, -1)
    total = 0.0
    for k in range(K):  # K is the number of peers (2-4), not a data dimension
        others = torch.cat([log_p[:k], log_p[k + 1:]]).detach()  # (K-1, B, C), constants for peer k
        kl = F.kl_div(log_p[k].expand_as(others), others, reduction="none",
                      log_target=True).sum(-1).mean()         # 1/(K-1) sum_l KL(p_l || p_k)
        total = total + F.cross_entropy(logits[k], targets) + kl  # L_k = CE(p_k, y) + ...
    return total


def mutual_learning_objective() -> Callable:
    """A ``loss_fn`` for ``fit(Cohort([...]), data, loss_fn=mutual_learning_objective())`` on
    ``(x, y)`` batches: :func:`mutual_learning_loss` of the cohort's stacked logits."""

    def loss_fn(cohort: Cohort, batch):
        if not isinstance(cohort, Cohort):
            raise TypeError(f"mutual_learning_objective() trains a Cohort of peers, got "
                            f"{type(cohort).__name__}")
        x, y = batch
        return mutual_learning_loss(cohort(x), y)

    return loss_fn
