"""MEMIT: many edits at once, spread over a range of MLP layers.

Meng et al. (ICLR 2023), *Mass-editing memory in a transformer*. ROME inserts one association
exactly into one layer (``rome``); MEMIT inserts a batch of ``n`` into layers ``R = (l_1, ..., L)``:

1. for each request, ``z_i = h_i^L + delta_i``: the hidden state after the last layer ``L`` at the
   subject's last token, with ``delta_i`` optimised as ROME's value (``rome.target_deltas`` on the
   block output instead of the MLP output; their Eq. 16);
2. for each layer ``l`` in ``R``, in order: the keys ``K`` (``n x m``, at the subject's last token,
   averaged over the prefixed prompts, with the layers before already edited), the residual still to
   write ``r_i = (z_i - h_i^L) / (L - l + 1)`` (spread evenly over the layers left, Eq. 20), and the
   least-squares update that writes it while keeping the keys ``C = E[k k^T]`` of the text:

       Delta_l = R^T K (lambda C + K^T K)^{-1}          (their Eq. 14, C_0 = lambda E[k k^T])

With one request and one layer this is ROME's update scaled by ``s / (1 + s)``, ``s = k*^T (lambda
C)^{-1} k*`` (Sherman-Morrison): ROME's hard constraint ``W' k* = v*`` is MEMIT's soft one in the
limit ``lambda -> 0``. ``lambda`` (``mom2_weight``) trades the new associations against the old.

Chapter: notebooks/18_locate_and_edit.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import checks
from ..hooks import capture_outputs, get_module, linear_weight
from ..lm import encode
from ..utils import device_of, eval_mode
from .base import Edit, EditRequest, ModelSnapshot, check_requests, hidden_of, layer_list, subject_last_token
from .finetune import mlp_name
from .rome import _gpt2_blocks, check_invertible, key_covariance, mlp_keys, target_deltas

__all__ = ["Memit", "memit_update"]


def memit_update(weight: torch.Tensor, keys: torch.Tensor, residuals: torch.Tensor,
                 covariance: torch.Tensor, mom2_weight: float) -> torch.Tensor:
    """MEMIT's Eq. 14 for one layer: ``Delta = R^T K (lambda C + K^T K)^{-1}``,
    ``d x m``, from the keys ``K`` (``n x m``), residuals ``R`` (``n x d``), ``C``."""
    k, r = keys.double(), residuals.double()
    c = covariance.double().to(k.device)
    a = mom2_weight * c + k.T @ k                          # lambda C + K^T K, (m, m)
    return torch.linalg.solve(a, k.T @ r).T.to(weight.dtype)  # R^T K A^{-1}, (d, m)


@torch.no_grad()
def _hidden_at_subject(model, tokenizer, requests, layer: int) -> torch.Tensor:
    """``h_i^L``: block ``layer``'s output at each request's subject's last token, ``(n, d)``."""
    name = f"transformer.h.{layer}"
    dev = device_of(model)
    batch = {k: v.to(dev) for k, v in encode(tokenizer, [r.prompt for r in requests]).items()}
    pos = torch.tensor([subject_last_token(tokenizer, r.prompt, r.subject) for r in requests])
    with eval_mode(model), capture_outputs(model, [name]) as out:
        model(**batch)
    return hidden_of(out[name])[torch.arange(len(requests)), pos.to(dev)]


class Memit:
    """MEMIT's editor (module docstring): any number of requests per call, written into the MLP
    output projections of ``layers`` (ascending). Covariances come from ``covariances`` (one per
    layer) or are estimated from ``texts`` at the first call and kept; ``damping`` adds
    ``damping * I``. ``mom2_weight`` is Eq. 14's ``lambda``; ``prefixes``, ``steps``, ``lr``,
    ``kl_weight``, ``weight_decay`` and ``clamp`` are the ``z_i`` optimisation (ROME's Eq. 4)."""

    name = "MEMIT"
    paper = "Meng et al. (ICLR 2023), Mass-editing memory in a transformer"
    max_requests = None

    def __init__(self, layers: Sequence[int], texts: Sequence[str] | None = None,
                 covariances: Sequence[torch.Tensor] | None = None, mom2_weight: float = 1e4,
                 damping: float = 0.0, prefixes: Sequence[str] = (), steps: int = 20,
                 lr: float = 0.5, kl_weight: float = 0.0625, weight_decay: float = 0.5,
                 clamp: float = 4.0):
        self.layers = layer_list(layers)
        if self.layers != sorted(set(self.layers)):
            raise ValueError(f"layers must be distinct and ascending, got {self.layers}")
        if texts is None and covariances is None:
            raise ValueError("MEMIT needs the key covariance of each layer: pass texts to estimate "
                             "them from (e.g. FactWorld.corpus()) or covariances")
        if covariances is not None and len(covariances) != len(self.layers):
            raise ValueError(f"give one covariance per layer ({len(self.layers)}), got {len(covariances)}")
        self.texts = None if texts is None else checks.texts(texts, "texts")
        self.covariances = covariances
        self.mom2_weight = checks.positive(mom2_weight, "mom2_weight")
        self.damping = checks.number(damping, "damping", low=0)
        self.prefixes = checks.texts(prefixes, "prefixes") if len(prefixes) else []
        self.opt = dict(steps=steps, lr=lr, kl_weight=kl_weight, weight_decay=weight_decay,
                        clamp=clamp)
        self._cached: tuple | None = None  # (id(model), [C_l + damping I])

    def _covariances(self, model, tokenizer) -> list[torch.Tensor]:
        if self._cached is None or self._cached[0] != id(model):
            cs = self.covariances or [key_covariance(model, tokenizer, self.texts, layer)
                                      for layer in self.layers]
            self._cached = (id(model), [check_invertible(c, self.damping) for c in cs])
        return self._cached[1]

    def edit(self, model: nn.Module, tokenizer,
             requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        _gpt2_blocks(model, self.name)
        names = [mlp_name(model, layer) for layer in self.layers]  # checks the range
        covariances = self._covariances(model, tokenizer)
        snapshot = ModelSnapshot(model, parameters=[n + ".weight" for n in names])
        last = self.layers[-1]
        delta, h0 = target_deltas(model, tokenizer, requests, f"transformer.h.{last}",
                                  self.prefixes, **self.opt)
        z = h0 + delta                                       # z_i = h_i^L + delta_i
        for i, (layer, name, c) in enumerate(zip(self.layers, names, covariances)):
            keys = mlp_keys(model, tokenizer, requests, layer, self.prefixes)  # (n, m)
            h = _hidden_at_subject(model, tokenizer, requests, last)  # h_i^L now
            residual = (z - h) / (len(self.layers) - i)      # spread over layers left
            weight = linear_weight(get_module(model, name))
            with torch.no_grad():
                weight.add_(memit_update(weight, keys, residual, c, self.mom2_weight))
        return Edit(model, snapshot.restore, self.name, requests)
