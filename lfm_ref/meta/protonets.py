"""Prototypical networks (Snell et al., 2017): classify a query by its distance to each class's mean embedding.

An encoder ``f`` maps examples to embeddings; the prototype of class ``k`` is the mean embedding of its
support examples, ``c_k = 1/|S_k| sum_{x in S_k} f(x)`` (Snell et al., Eq. 1), and a query's logits are the
negative squared Euclidean distances ``-||f(x) - c_k||^2`` (Eq. 2, a softmax over them). Meta-training
minimises the query cross-entropy over episodes; meta-test needs no gradient step at all. The same two
functions score the nearest-centroid baseline: prototypes of a pretrained network's features.

Chapter: notebooks/14_learning_to_learn.ipynb.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..utils import device_of, eval_mode
from .episodes import Episode


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor,
               n_way: int) -> torch.Tensor:
    """The class means ``c_k`` of the support embeddings (Snell et al., 2017, Eq. 1):
    ``(n_way, d)`` for ``embeddings (n, d)`` and ``labels (n,)``, or ``(T, n_way, d)``
    for a batch of tasks ``(T, n, d)``."""
    checks.tensor(embeddings, "embeddings", dim=(2, 3), floating=True)
    checks.tensor(labels, "labels", dim=embeddings.dim() - 1, floating=False)
    if labels.shape != embeddings.shape[:-1]:
        raise ValueError(f"labels must label each embedding, expected shape "
                         f"{tuple(embeddings.shape[:-1])}, got {tuple(labels.shape)}")
    n_way = checks.positive_int(n_way, "n_way")
    checks.class_indices(labels, "labels", n_way)
    onehot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (..., n, N)
    counts = onehot.sum(-2)  # (..., N)
    if (counts == 0).any():
        missing = int((counts == 0).nonzero()[0, -1])
        raise ValueError(f"class {missing} has no support example: every class "
                         f"0..{n_way - 1} needs one for a prototype")
    # Eq. 1: the sum over S_k divided by |S_k|
    return onehot.transpose(-1, -2) @ embeddings / counts[..., None]


def protonet_logits(query_embeddings: torch.Tensor,
                    prototypes: torch.Tensor) -> torch.Tensor:
    """``-||f(x) - c_k||^2`` for every query and class (Snell et al., 2017, Eq. 2):
    ``(q, N)`` for ``(q, d)`` queries and ``(N, d)`` prototypes, ``(T, q, N)`` for a
    batch of tasks."""
    q, c = query_embeddings, prototypes
    checks.tensor(q, "query_embeddings", dim=(2, 3), floating=True)
    checks.tensor(c, "prototypes", dim=q.dim(), floating=True)
    if c.shape[-1] != q.shape[-1] or c.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"queries and prototypes must share the task dimension and "
                         f"embedding size, got shapes {tuple(q.shape)} and "
                         f"{tuple(c.shape)}")
    diff = q.unsqueeze(-2) - c.unsqueeze(-3)  # (..., q, N, d)
    return -diff.pow(2).sum(-1)  # Eq. 2


def _embed(model: nn.Module, x: torch.Tensor, encoder_forward: Callable | None) -> torch.Tensor:
    """Embeddings of ``x (T, n, ...)`` or ``(n, ...)``: the task dimension folded into the batch."""
    lead = x.shape[:-3] if x.dim() >= 4 else x.shape[:-1]  # images (.., C, H, W) or vectors (.., d)
    flat = x.reshape(-1, *x.shape[len(lead):])
    z = encoder_forward(model, flat) if encoder_forward is not None else model(flat)
    return z.reshape(*lead, -1)


def _check_encoder(encoder_forward):
    if encoder_forward is not None and not callable(encoder_forward):
        raise TypeError(f"encoder_forward must be a function encoder_forward(model, x) -> embeddings, got "
                        f"{type(encoder_forward).__name__}")


def protonet_objective(encoder_forward: Callable | None = None) -> Callable[[nn.Module, Episode], torch.Tensor]:
    """The prototypical-network loss as a ``loss_fn(model, batch)`` for ``lfm_ref.fit``: the query
    cross-entropy over a batch of episodes, logits from :func:`protonet_logits`. The model is the encoder
    (``model(x)`` is the embedding), or ``encoder_forward(model, x)`` gives it (``lambda m, x: m.body(x)``)."""
    _check_encoder(encoder_forward)

    def objective(model: nn.Module, batch: Episode) -> torch.Tensor:
        logits = protonet_episode_logits(model, batch, encoder_forward, grad=True)
        return F.cross_entropy(logits.flatten(0, -2), batch.query_y.to(logits.device).flatten())

    return objective


def protonet_episode_logits(model: nn.Module, episodes: Episode, encoder_forward: Callable | None = None,
                            grad: bool = False) -> torch.Tensor:
    """Query logits of a (batch of) episode(s) under the encoder: the ProtoNet classifier at meta-test,
    and the nearest-centroid baseline when the encoder is a pretrained network's feature extractor. Without
    ``grad`` it runs in eval mode and without a graph."""
    if not isinstance(episodes, Episode) or episodes.regression:
        raise TypeError("protonet logits need a classification Episode (or a batch of them)")
    _check_encoder(encoder_forward)
    episodes = episodes.to(device_of(checks.module(model)))
    if grad:
        s = _embed(model, episodes.support_x, encoder_forward)
        q = _embed(model, episodes.query_x, encoder_forward)
    else:
        with eval_mode(model), torch.no_grad():
            s = _embed(model, episodes.support_x, encoder_forward)
            q = _embed(model, episodes.query_x, encoder_forward)
    return protonet_logits(q, prototypes(s, episodes.support_y, episodes.n_way))
