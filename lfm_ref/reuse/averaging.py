"""Averaging weights across runs and along a run: model soups, SWA, LAWA and FedAvg.

All four are :func:`lfm_ref.reuse.merging.weighted_average` applied to a chosen set of state dicts:

- **model soups** (Wortsman et al., 2022, ICML; arXiv:2203.05482): fine-tuned runs of one pretrained
  model with different hyper-parameters. The uniform soup averages all; the **greedy soup** adds
  ingredients in order of their held-out score and keeps one only if the soup's score does not drop.
- **SWA** (Izmailov et al., 2018, UAI; arXiv:1803.05407): the checkpoints of one run taken at a high,
  constant learning rate, averaged (``fit(..., callback=...)`` records them).
- **LAWA** (Kaddour, 2022, arXiv:2209.14981): the average of the latest ``k`` checkpoints, during training.
- **AdapterSoup** (Chronopoulou et al., 2023, Findings of EACL; arXiv:2302.07027): adapters trained on
  different domains; for a new domain, average the weights of the ``k`` adapters whose domains are most
  similar to it (:func:`domain_similarity`, :func:`adapter_soup`).
- **FedAvg** (McMahan et al., 2017, AISTATS; arXiv:1602.05629): each round, every client trains the
  global model on its own data and the server averages the clients' weights, weighted by data size:
  ``theta <- sum_k n_k theta_k / sum_k n_k``.

Chapters: notebooks/11b_averaging_runs.ipynb (soups, SWA, LAWA, FedAvg) and
notebooks/11c_adapter_soup.ipynb (AdapterSoup).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from .. import checks
from ..state_dicts import StateDict, check_state_dicts
from ..train import fit
from .merging import weighted_average


def greedy_soup(state_dicts: Sequence[StateDict], score: Callable[[StateDict], float]
                ) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Wortsman et al.'s greedy soup; ``score(state_dict)`` is a held-out metric, higher
    is better.

    Returns the soup and the indices of the ingredients it kept, in the order they were
    added.
    """
    state_dicts = check_state_dicts(state_dicts)
    if not callable(score):
        raise TypeError(f"score must be a function of a state dict, got "
                        f"{type(score).__name__}")
    scores = [score(sd) for sd in state_dicts]
    order = sorted(range(len(state_dicts)), key=lambda i: -scores[i])
    kept, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        candidate = score(weighted_average([state_dicts[j] for j in kept + [i]]))
        # the paper keeps an ingredient when held-out accuracy does not drop
        if candidate >= best:
            kept, best = kept + [i], candidate
    return weighted_average([state_dicts[j] for j in kept]), kept


def fedavg(model: nn.Module, clients: Sequence, rounds: int, local_steps: int,
           callback=None, **fit_kwargs) -> nn.Module:
    """Federated averaging of ``model`` over ``clients`` (one dataset each; see
    :func:`lfm_ref.fit`).

    Every round, each client starts from the global weights and takes ``local_steps``
    steps of :func:`lfm_ref.fit` (``fit_kwargs``: ``lr``, ``batch_size``, ``device``,
    ...) on its own data; the new global weights are the clients' average weighted by
    their number of examples. ``callback(round, model)`` runs after every round.
    Returns ``model`` holding the global weights.
    """
    checks.module(model)
    if len(clients) == 0:
        raise ValueError("clients is empty: FedAvg needs at least one client dataset")
    rounds = checks.positive_int(rounds, "rounds")
    local_steps = checks.positive_int(local_steps, "local_steps")
    sizes = [len(data[0]) if isinstance(data, tuple) else len(data) for data in clients]
    seed = fit_kwargs.pop("seed", 0)
    for r in range(rounds):
        local_weights = []
        for k, data in enumerate(clients):
            local = copy.deepcopy(model)
            fit(local, data, steps=local_steps, seed=seed + r * len(clients) + k,
                **fit_kwargs)
            local_weights.append(local.state_dict())
        # theta <- sum_k n_k theta_k / sum_k n_k
        model.load_state_dict(weighted_average(local_weights, weights=sizes))
        if callback is not None:
            callback(r + 1, model)
    return model


@torch.no_grad()
def domain_similarity(embed: Callable[[torch.Tensor], torch.Tensor],
                      new_inputs: torch.Tensor, domains: Sequence[torch.Tensor]
                      ) -> torch.Tensor:
    """Cosine similarity between the mean embedding of ``new_inputs`` and that of each
    domain's inputs.

    ``embed`` maps a batch of inputs to feature vectors (for instance a pretrained
    model's features); AdapterSoup uses a sentence encoder's embeddings of the domains'
    text in the same way.
    """
    if len(domains) == 0:
        raise ValueError("domain_similarity needs the inputs of at least one training "
                         "domain")
    centre = embed(new_inputs).mean(0)
    centres = torch.stack([embed(x).mean(0) for x in domains])
    return torch.nn.functional.cosine_similarity(centres, centre[None], dim=-1)


def adapter_soup(adapters: Sequence[StateDict], scores: Sequence[float] | torch.Tensor,
                 k: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """AdapterSoup: the uniform average of the ``k`` adapters with the highest
    ``scores`` (domain similarity).

    Parameters are averaged one by one, as in the paper. For LoRA adapters that averages
    ``A`` and ``B`` separately, which equals averaging the updates ``B A`` only up to
    cross terms: adapters that start from the same initialisation (same seed) stay close
    enough for this to work, as chapter 12 explains.
    """
    adapters = check_state_dicts(adapters, "adapters")
    if isinstance(scores, str):
        raise TypeError(f"scores must be numbers, one per adapter, got {scores!r}")
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.shape != (len(adapters),):
        raise ValueError(f"need one score per adapter ({len(adapters)}), got shape "
                         f"{tuple(scores.shape)}")
    k = checks.int_between(k, "k", 1, len(adapters), "the number of adapters")
    chosen = scores.argsort(descending=True)[:k].tolist()
    return weighted_average([adapters[i] for i in chosen]), chosen
