"""kNN-LM (Khandelwal et al., 2020, "Generalization through Memorization: Nearest Neighbor Language
Models", ICLR; arXiv:1911.00172): a datastore of ``(key, value) = (f(context), next token)`` pairs built
by running the frozen LM over a corpus, and the interpolation

    p(y | x) = lambda p_kNN(y | x) + (1 - lambda) p_LM(y | x),
    p_kNN(y | x) ∝ sum_{(k_i, v_i) in kNN(f(x))} 1[v_i = y] exp(-||f(x) - k_i||^2 / T).

``f`` is the LM's last hidden state (the input of its output layer). With the datastore built from the
recent history instead of a corpus, this is the continuous cache of Grave et al. (2017).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..lm import at_last_token, encode


@dataclass
class Datastore:
    keys: torch.Tensor  # (N, d) last hidden states
    values: torch.Tensor  # (N,) the token that followed each


@torch.no_grad()
def _last_hidden(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[-1], out.logits


@torch.no_grad()
def build_datastore(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> Datastore:
    """One entry per (position, next token) of every text; padding is skipped."""
    model.eval()
    dev = next(model.parameters()).device
    keys, values = [], []
    batch = encode(tokenizer, texts)
    for start in range(0, len(texts), batch_size):
        part = {k: v[start:start + batch_size].to(dev) for k, v in batch.items()}
        hidden, _ = _last_hidden(model, part)
        has_next = part["attention_mask"][:, 1:].bool()  # position t has a real token at t + 1
        keys.append(hidden[:, :-1][has_next])
        values.append(part["input_ids"][:, 1:][has_next])
    return Datastore(torch.cat(keys), torch.cat(values))


@torch.no_grad()
def knn_lm_probs(model, tokenizer, prompts: Sequence[str], datastore: Datastore, lam: float = 0.25, k: int = 8,
                 temperature: float = 1.0) -> torch.Tensor:
    """Next-token probabilities ``(len(prompts), vocab)`` of the interpolated kNN-LM."""
    if not 0 <= lam <= 1:
        raise ValueError(f"lam (the interpolation weight) must lie in [0, 1], got {lam}")
    if not 1 <= k <= len(datastore.values):
        raise ValueError(f"k must lie in [1, {len(datastore.values)}] (the datastore's size), got {k}")
    model.eval()
    dev = next(model.parameters()).device
    batch = {key: v.to(dev) for key, v in encode(tokenizer, prompts).items()}
    hidden, logits = _last_hidden(model, batch)
    query = at_last_token(hidden, batch["attention_mask"])
    p_lm = at_last_token(logits, batch["attention_mask"]).softmax(-1)
    keys = datastore.keys.to(dev)
    dist = torch.cdist(query, keys).pow(2)  # (B, N) squared L2, as in the paper
    near, idx = dist.topk(k, largest=False)
    weights = (-near / temperature).softmax(-1)  # exp(-d / T), normalised over the k neighbours
    p_knn = torch.zeros_like(p_lm).scatter_add_(1, datastore.values.to(dev)[idx], weights)
    return lam * p_knn + (1 - lam) * p_lm
