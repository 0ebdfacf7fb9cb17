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


def independent_objective(loss_fn: Callable | Sequence[Callable] | None = None
                          ) -> Callable:
    """A ``loss_fn`` that trains the members of a :class:`Cohort` *independently*, as
    separate runs: the sum over members k of ``loss_fn(member_k, batch)`` (cross-entropy
    on ``(x, y)`` when None), or of ``loss_fn[k](member_k, batch)`` with one objective
    per member (e.g. each distilled from its own teacher).

    No term couples two members, so each gets the gradient of its own loss, and AdamW's
    update is per parameter: one ``fit`` of a cohort of K seeds trains K models as K
    separate ``fit`` calls would (they share the order of the batches), at about the
    cost of one for models as small as chapter 7's, whose steps are mostly fixed costs.
    """
    from ..train import default_loss

    many = isinstance(loss_fn, (list, tuple))
    fns = list(loss_fn) if many else [loss_fn]
    for i, fn in enumerate(fns):
        if fn is not None and not callable(fn):
            name = f"loss_fn[{i}]" if many else "loss_fn"
            raise TypeError(f"{name} must be a function loss_fn(model, batch) or None, "
                            f"got {type(fn).__name__}")
    fns = [fn or default_loss for fn in fns]

    def loss_fn_(cohort: Cohort, batch):
        if not isinstance(cohort, Cohort):
            raise TypeError(f"independent_objective trains a Cohort of members, got "
                            f"{type(cohort).__name__}")
        if many and len(fns) != len(cohort.peers):
            raise ValueError(f"independent_objective got {len(fns)} objectives for a "
                             f"cohort of {len(cohort.peers)} members")
        if many:
            members = zip(fns, cohort.peers)
        else:
            members = ((fns[0], m) for m in cohort.peers)
        return sum(fn(m, batch) for fn, m in members)  # sum_k L_k(member_k)

    return loss_fn_


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
