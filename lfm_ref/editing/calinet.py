"""CaliNet: calibration memory slots added beside a feed-forward layer.

Dong et al. (Findings of EMNLP 2022), *Calibrating factual knowledge in pretrained language
models*. A transformer's FFN is a key-value memory, ``FFN(H) = act(H K^T) V``; CaliNet adds a
small second memory of ``n`` slots beside it and trains only that, the model frozen:

    FFN'(H) = act(H K^T) V + act(H K_c^T) V_c,      K_c, V_c in R^{n x d}          (their Eq. 2)

with the FFN's own activation (GPT-2: the tanh GELU). The value matrix starts at zero, so before
training the calibrated model is the model. The slots are trained on the facts to correct, stated
in several templates (the paper's calibration data): the cross-entropy of ``target_new`` after the
edit prompt and its pretraining paraphrases (never the held-out one). The slots fire on any input,
so nothing but their small size and their training data keeps other facts in place: a regime
question chapter 17 measures.

A model already calibrated by this editor gets its slots trained further on the new requests
(one memory, as the paper has); ``restore`` gives back the slots' previous values, or the original
FFN after the first call.

Chapter: notebooks/17_editing_constrained.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import get_module
from ..train import fit
from ..utils import device_of
from .base import Edit, EditRequest, ModelSnapshot, check_requests
from .finetune import edit_dataset, last_token_objective, mlp_name

__all__ = ["CalibratedFFN", "CaliNet"]


class CalibratedFFN(nn.Module):
    """``base(h) + gelu(h K_c^T) V_c``: a frozen FFN and ``slots`` calibration slots (CaliNet Eq. 2).

    ``K_c`` starts as ``N(0, 1/d)`` (drawn from ``generator``), ``V_c`` at zero."""

    def __init__(self, base: nn.Module, width: int, slots: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        p = next(base.parameters())
        keys = torch.randn(slots, width, generator=generator) / width ** 0.5
        self.keys = nn.Parameter(keys.to(p))  # K_c, (n, d)
        self.values = nn.Parameter(torch.zeros(slots, width, device=p.device, dtype=p.dtype))

    def slot_activations(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h @ self.keys.T, approximate="tanh")  # act(H K_c^T), (..., n)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h) + self.slot_activations(h) @ self.values  # Eq. 2


class CaliNet:
    """CaliNet's editor (module docstring): ``slots`` calibration slots beside the FFN of ``layer``
    (default: the last block), trained ``steps`` steps at rate ``lr`` on the requests and their
    pretraining paraphrases. Any number of requests per call."""

    name = "CaliNet"
    paper = "Dong et al. (Findings of EMNLP 2022), Calibrating factual knowledge in PLMs"
    max_requests = None

    def __init__(self, layer: int = -1, slots: int = 64, steps: int = 50, lr: float = 1e-2,
                 seed: int = 0):
        self.layer = checks.integer(layer, "layer")
        self.slots = checks.positive_int(slots, "slots")
        self.steps = checks.positive_int(steps, "steps")
        self.lr = checks.positive(lr, "lr")
        self.seed = checks.integer(seed, "seed", minimum=0)

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        n_layer = len(getattr(getattr(model, "transformer", None), "h", ()))
        layer = self.layer + n_layer if self.layer < 0 else self.layer
        name = mlp_name(model, layer, "mlp")
        current = get_module(model, name)
        snapshot = ModelSnapshot(model)
        if isinstance(current, CalibratedFFN):  # one memory: train the same slots further
            ffn = current
            saved = (ffn.keys.detach().clone(), ffn.values.detach().clone())
        else:
            g = torch.Generator().manual_seed(self.seed)
            width = model.config.n_embd
            ffn = snapshot.replace_module(name, CalibratedFFN(current, width, self.slots, g))
            saved = None
        model.requires_grad_(False)
        slots = [ffn.keys, ffn.values]
        for p in slots:
            p.requires_grad_(True)
        fit(model, edit_dataset(tokenizer, requests, paraphrases=True),
            loss_fn=last_token_objective(), steps=self.steps, batch_size=512, lr=self.lr,
            params=slots, schedule="constant", device=device_of(model), seed=self.seed,
            progress=False)
        snapshot.restore_flags()  # grads and modes as they were; the slots stay
        for p in slots:
            p.requires_grad_(False)

        def undo() -> nn.Module:
            if saved is not None:
                with torch.no_grad():
                    ffn.keys.copy_(saved[0])
                    ffn.values.copy_(saved[1])
            return snapshot.restore()

        return Edit(model, undo, self.name, requests)
