"""Meta-test: few-shot accuracy over held-out episodes, and the pretrained baselines it is compared with.

The few-shot literature reports the mean query accuracy over many test episodes with a 95% confidence
interval, ``mean +- 1.96 * std / sqrt(n_episodes)`` (Finn et al., 2017; Snell et al., 2017). The baselines
of Tian et al. (2020, "a good embedding is all you need") start from a network pretrained on all
meta-train classes jointly, then classify a new episode by nearest centroid or nearest neighbour on its
features, or fine-tune it on the support set with a new head.

Chapter: notebooks/14_learning_to_learn.ipynb.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from .. import checks
from ..utils import device_of, eval_mode, random_state_kept
from .episodes import Episode
from .maml import adapted_query_outputs


def mean_and_interval(values) -> tuple[float, float]:
    """The mean of ``values`` and the half-width of its 95% normal interval, ``1.96 * std / sqrt(n)``."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("mean_and_interval needs at least one value, got none")
    half = 1.96 * v.std().item() / math.sqrt(v.numel()) if v.numel() > 1 else float("nan")
    return v.mean().item(), half


def episode_accuracies(logits: torch.Tensor, episode: Episode) -> torch.Tensor:
    """The query accuracy of each task of ``episode`` under ``logits`` ``(q, N)`` or ``(T, q, N)``."""
    if not isinstance(episode, Episode) or episode.regression:
        raise TypeError("few-shot accuracy needs classification Episodes")
    checks.tensor(logits, "logits", floating=True)
    want = (*episode.query_y.shape, episode.n_way)
    if tuple(logits.shape) != want:
        raise ValueError(f"the predictor must return query logits of shape {want} (queries x n_way), got "
                         f"{tuple(logits.shape)}")
    hits = logits.argmax(-1) == episode.query_y.to(logits.device)
    return hits.float().mean(-1).reshape(-1).cpu()


def few_shot_accuracy(adapt_and_predict: Callable[[Episode], torch.Tensor],
                      episodes: Iterable[Episode]) -> tuple[float, float]:
    """Mean query accuracy over test episodes and its 95% interval half-width.

    ``adapt_and_predict(episode)`` adapts to the episode's support set however its method does (no step
    for ProtoNets, a few gradient steps for MAML) and returns logits on the query, ``(q, N)`` for a single
    episode or ``(T, q, N)`` for a batch. ``episodes`` is an iterable of single or batched Episodes; every
    task counts as one episode of the mean.
    """
    if not callable(adapt_and_predict):
        raise TypeError(f"adapt_and_predict must be a function of an Episode returning query logits, got "
                        f"{type(adapt_and_predict).__name__}")
    if isinstance(episodes, Episode):
        episodes = [episodes]
    accs = [episode_accuracies(adapt_and_predict(e), e) for e in episodes]
    if not accs:
        raise ValueError("few_shot_accuracy needs at least one episode, got none")
    return mean_and_interval(torch.cat(accs))


def nearest_neighbour_logits(model: nn.Module, episodes: Episode, encoder_forward: Callable | None = None):
    """1-nearest-neighbour on features: a query's logit for class ``k`` is minus its squared distance to
    the closest support example of ``k`` (Tian et al., 2020's simplest baseline). ``encoder_forward(model,
    x)`` gives the features (``model(x)`` by default)."""
    from .protonets import _embed

    if not isinstance(episodes, Episode) or episodes.regression:
        raise TypeError("nearest_neighbour_logits needs a classification Episode (or a batch of them)")
    episodes = episodes.to(device_of(checks.module(model)))
    with eval_mode(model), torch.no_grad():
        s = _embed(model, episodes.support_x, encoder_forward)  # (..., n, d)
        q = _embed(model, episodes.query_x, encoder_forward)  # (..., q, d)
    d = (q.unsqueeze(-2) - s.unsqueeze(-3)).pow(2).sum(-1)  # (..., q, n)
    onehot = torch.nn.functional.one_hot(episodes.support_y, episodes.n_way).bool()  # (..., n, N)
    masked = d.unsqueeze(-1).masked_fill(~onehot.unsqueeze(-3), float("inf"))  # (..., q, n, N)
    return -masked.amin(-2)


class FeaturesWithHead(nn.Module):
    """A feature extractor ``encoder_forward(body, x)`` under a new linear ``n_way`` head that starts at
    zero (every class equally likely): the model that fine-tuning on a support set adapts."""

    def __init__(self, body: nn.Module, feature_dim: int, n_way: int, encoder_forward: Callable | None = None):
        super().__init__()
        self.body = checks.module(body, "body")
        self.encoder_forward = encoder_forward
        with random_state_kept():  # nn.Linear's default init draws from the global stream; ours is zeros
            self.head = nn.Linear(checks.positive_int(feature_dim, "feature_dim"), checks.positive_int(n_way, "n_way"))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder_forward(self.body, x) if self.encoder_forward is not None else self.body(x)
        return self.head(z)


def finetune_logits(model: nn.Module, episodes: Episode, feature_dim: int, steps: int = 50, lr: float = 0.1,
                    encoder_forward: Callable | None = None, head_only: bool = False) -> torch.Tensor:
    """Fine-tuning baseline: a zero-initialised linear head on ``model``'s features, trained with the body
    (or alone, ``head_only``: a linear probe) for ``steps`` SGD steps at ``lr`` on each episode's support
    set, every task of a batch at once; returns query logits. ``model`` itself is not changed."""
    if not isinstance(episodes, Episode) or episodes.regression or not episodes.batched:
        raise TypeError("finetune_logits needs a batch of classification Episodes")
    net = FeaturesWithHead(model, feature_dim, episodes.n_way, encoder_forward).to(device_of(model))
    return adapted_query_outputs(net, episodes, steps, lr, adapt="head" if head_only else None)
