"""Transformer-Patcher (Huang et al., ICLR 2023): one trainable neuron per mistake in the last FFN.

The patched FFN is ``FFN_p(q) = FFN(q) + sum_j relu(q . k_j + b_j) v_j`` (their Eq. 2, with ReLU so
that a neuron with activation ``a <= 0`` adds exactly nothing). A new neuron ``(k, b, v)`` is trained,
the model and earlier neurons frozen, on ``L = l_e + alpha l_a + mu l_m`` (their Eq. 3-6):

- ``l_e``: cross-entropy of ``target_new`` at the edit prompt's last token;
- ``l_a = exp(-a_e)``, ``a_e = q_e . k + b`` at that token: the neuron fires on the edit;
- ``l_m = mean exp(a_M - beta) + mean exp(a_M - a_e + gamma)`` over the queries ``q_M`` of a memory of
  other inputs (every position of ``memory`` prompts): it stays below ``beta`` there, and ``gamma``
  below the edit.

After training, if any memory activation is still above 0 the bias is lowered by that amount (one
subtraction; our addition, so that "silent on the memory" holds exactly). Chapter 17.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import capture_inputs, get_module
from ..lm import at_last_token, encode
from ..train import fit
from ..utils import device_of
from .base import Edit, EditRequest, ModelSnapshot, check_requests
from .finetune import edit_dataset, last_token_objective, mlp_name

__all__ = ["PatchedFFN", "TransformerPatcher"]


class PatchedFFN(nn.Module):
    """``base(q) + relu(q K^T + b) V``: the frozen FFN and its patch neurons (rows of K, b, V)."""

    def __init__(self, base: nn.Module, width: int):
        super().__init__()
        self.base = base
        p = next(base.parameters())
        self.keys = nn.Parameter(torch.zeros(0, width, device=p.device, dtype=p.dtype), requires_grad=False)
        self.biases = nn.Parameter(torch.zeros(0, device=p.device, dtype=p.dtype), requires_grad=False)
        self.values = nn.Parameter(torch.zeros(0, width, device=p.device, dtype=p.dtype), requires_grad=False)

    def activations(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self.keys.T + self.biases  # a = q . k + b, (..., n_neurons)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.base(q) + F.relu(self.activations(q)) @ self.values  # Eq. 2


class TransformerPatcher:
    """One neuron per edit (``max_requests = 1``), added to the FFN of ``layer`` (default: the last).
    ``memory``: prompts of other inputs, representative of what the model will see (precondition)."""

    name = "T-Patcher"
    paper = "Huang et al. (ICLR 2023), Transformer-Patcher: one mistake worth one neuron"
    max_requests = 1

    def __init__(self, memory: Sequence[str], layer: int = -1, steps: int = 60, lr: float = 1e-2,
                 alpha: float = 1.0, mu: float = 1.0, beta: float = -3.0, gamma: float = 3.0, seed: int = 0):
        self.memory = checks.texts(memory, "memory")
        self.layer, self.steps, self.lr = layer, checks.positive_int(steps, "steps"), checks.positive(lr, "lr")
        self.alpha, self.mu, self.beta, self.gamma = alpha, mu, beta, gamma
        self.seed = checks.integer(seed, "seed", minimum=0)

    def _queries(self, model, tokenizer, name, prompts):
        batch = encode(tokenizer, prompts)
        dev = device_of(model)
        with torch.no_grad(), capture_inputs(model, [name]) as seen:
            model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev))
        return seen[name], batch["attention_mask"].to(dev)

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        n_layer = len(model.transformer.h) if hasattr(model, "transformer") else 0
        layer = self.layer + n_layer if isinstance(self.layer, int) and self.layer < 0 else self.layer
        name = mlp_name(model, layer, "mlp")
        current = get_module(model, name)
        snapshot = ModelSnapshot(model)
        width = model.config.n_embd
        if isinstance(current, PatchedFFN):
            ffn, before = current, (current.keys, current.biases, current.values)
        else:
            ffn, before = snapshot.replace_module(name, PatchedFFN(current, width)), None
        q_m, mask_m = self._queries(model, tokenizer, name, self.memory)
        q_m = q_m[mask_m.bool()]  # every real position of the memory prompts, (N, d)
        q_e, mask_e = self._queries(model, tokenizer, name, [requests[0].prompt])
        q_e = at_last_token(q_e, mask_e)[0]
        g = torch.Generator().manual_seed(self.seed)
        k = nn.Parameter((torch.randn(width, generator=g) / width ** 0.5).to(q_e))
        b, v = nn.Parameter(torch.zeros((), device=q_e.device)), nn.Parameter(torch.zeros(width, device=q_e.device))
        old = (ffn.keys, ffn.biases, ffn.values)
        model.requires_grad_(False)

        def install():
            ffn.keys = nn.Parameter(torch.cat([old[0], k[None]]), requires_grad=False)
            ffn.biases = nn.Parameter(torch.cat([old[1], b[None]]), requires_grad=False)
            ffn.values = nn.Parameter(torch.cat([old[2], v[None]]), requires_grad=False)

        edit_loss = last_token_objective()

        def loss_fn(model, batch):
            ffn.keys, ffn.biases, ffn.values = (torch.cat([old[0], k[None]]), torch.cat([old[1], b[None]]),
                                                torch.cat([old[2], v[None]]))
            a_e, a_m = q_e @ k + b, q_m @ k + b
            l_a = torch.exp(-a_e)  # Eq. 4
            l_m = torch.exp(a_m - self.beta).mean() + torch.exp(a_m - a_e + self.gamma).mean()  # Eq. 5-6
            return edit_loss(model, batch) + self.alpha * l_a + self.mu * l_m  # Eq. 3

        for attr in ("keys", "biases", "values"):  # plain tensors during training
            delattr(ffn, attr)
        fit(model, edit_dataset(tokenizer, requests), loss_fn=loss_fn, steps=self.steps, batch_size=1,
            lr=self.lr, params=[k, b, v], schedule="constant", device=q_e.device, seed=self.seed,
            progress=False)
        with torch.no_grad():
            excess = (q_m @ k + b).max()
            if excess > 0:
                b -= excess  # silent on every memory query: a_M <= 0
        for attr in ("keys", "biases", "values"):
            if attr in ffn.__dict__:
                del ffn.__dict__[attr]
        install()
        snapshot.restore_flags()  # grads and modes as they were; the edit itself stays

        def undo():
            if before is None:
                return snapshot.restore()
            ffn.keys, ffn.biases, ffn.values = before
            return snapshot.restore()

        return Edit(model, undo, self.name, requests)
