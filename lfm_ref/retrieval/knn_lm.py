"""kNN-LM (Khandelwal et al., 2020, "Generalization through Memorization: Nearest Neighbor Language
Models", ICLR; arXiv:1911.00172): a datastore of ``(key, value) = (f(context), next token)`` pairs built
by running the frozen LM over a corpus, and the interpolation

    p(y | x) = lambda p_kNN(y | x) + (1 - lambda) p_LM(y | x),
    p_kNN(y | x) ∝ sum_{(k_i, v_i) in kNN(f(x))} 1[v_i = y] exp(-||f(x) - k_i||^2 / T).

``f`` is the LM's last hidden state (the input of its output layer). With the datastore built from the
recent history instead of a corpus, this is the continuous cache of Grave et al. (2017).

Chapter: notebooks/06a_knn_lm.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import checks
from ..lm import at_last_token, encode
from ..utils import device_of, eval_mode


@dataclass
class Datastore:
    keys: torch.Tensor  # (N, d) last hidden states
    values: torch.Tensor  # (N,) the token that followed each


@torch.no_grad()
def _last_hidden(model, batch):
    """The last hidden states ``(B, T, d)`` and the logits ``(B, T, V)`` of a batch, in eval mode."""
    with eval_mode(model):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True)
    return out.hidden_states[-1], out.logits


@torch.no_grad()
def build_datastore(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> Datastore:
    """One entry per (position, next token) of every text; padding is skipped."""
    checks.module(model)
    batch_size = checks.positive_int(batch_size, "batch_size")
    dev = device_of(model)
    keys, values = [], []
    batch = encode(tokenizer, texts)
    for start in range(0, len(batch["input_ids"]), batch_size):
        part = {k: v[start:start + batch_size].to(dev) for k, v in batch.items()}
        hidden, _ = _last_hidden(model, part)  # (b, T, d)
        has_next = part["attention_mask"][:, 1:].bool()  # (b, T - 1): position t has a real token at t + 1
        keys.append(hidden[:, :-1][has_next])  # (n, d): the context before each next token
        values.append(part["input_ids"][:, 1:][has_next])  # (n,): the next token
    return Datastore(torch.cat(keys), torch.cat(values))


def knn_lm_probs(model, tokenizer, prompts: Sequence[str], datastore: Datastore,
                 lam: float = 0.25, k: int = 8, temperature: float = 1.0,
                 ) -> torch.Tensor:
    """Next-token probabilities ``(len(prompts), vocab)`` of the interpolated kNN-LM
    (without gradients: the LM runs under ``no_grad``)."""
    checks.module(model)
    if not isinstance(datastore, Datastore):
        raise TypeError("datastore must be a Datastore (from build_datastore), "
                        f"got {type(datastore).__name__}")
    lam = checks.probability(lam, "lam (the interpolation weight)")
    k, size = checks.positive_int(k, "k"), len(datastore.values)
    if k > size:
        raise ValueError(f"k must lie in [1, {size}] (the datastore's size), got {k}")
    temperature = checks.positive(temperature, "temperature")
    dev = device_of(model)
    batch = {key: v.to(dev) for key, v in encode(tokenizer, prompts).items()}
    mask = batch["attention_mask"]
    hidden, logits = _last_hidden(model, batch)
    query = at_last_token(hidden, mask)  # (B, d): f(x)
    p_lm = at_last_token(logits, mask).softmax(-1)  # (B, V): p_LM(y | x)
    keys = datastore.keys.to(dev)  # (N, d)
    dist = torch.cdist(query, keys).pow(2)  # (B, N): ||f(x) - k_i||^2, as in the paper
    near, idx = dist.topk(k, largest=False)  # (B, k): the k nearest keys
    weights = (-near / temperature).softmax(-1)  # (B, k): exp(-d_i / T), normalised
    values = datastore.values.to(dev)[idx]  # (B, k): the token after each neighbour
    p_knn = torch.zeros_like(p_lm).scatter_add_(1, values, weights)  # sum_i 1[v_i=y]w_i
    return lam * p_knn + (1 - lam) * p_lm  # p = lam p_kNN + (1 - lam) p_LM
