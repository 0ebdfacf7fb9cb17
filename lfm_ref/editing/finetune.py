"""Fine-tuning one MLP weight on the edit, unconstrained (FT) or within an L-infinity ball (FT-L).

Zhu et al. (2020), *Modifying memories in transformer models*: minimise the edit's loss over the
parameters ``theta`` of one layer subject to ``||theta - theta_0||_inf <= delta`` (their Eq. 2), solved
by projected gradient descent: after every optimiser step each weight is clipped back into
``[theta_0 - delta, theta_0 + delta]``, as EasyEdit's FT-L does with its ``norm_constraint``. The edit's
loss is the cross-entropy of ``target_new`` at the prompt's last token (ROME's "prompt_last"
objective for its FT baselines). ``norm_bound=None`` is plain fine-tuning of the same weight.

Chapter: notebooks/17_editing_constrained.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import get_module
from ..lm import at_last_token, encode, target_ids
from ..train import DictDataset, fit
from .base import Edit, EditRequest, ModelSnapshot, check_requests

__all__ = ["FineTuneEditor", "edit_dataset", "last_token_objective", "mlp_name"]


def mlp_name(model: nn.Module, layer: int, part: str = "mlp.c_proj") -> str:
    """The name of ``part`` in block ``layer`` of a GPT-2-style model (``transformer.h``); a layer out
    of range raises a ValueError listing the valid ones."""
    checks.module(model)
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise TypeError(f"expected a GPT-2-style model with transformer.h blocks, got {type(model).__name__}")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
        raise ValueError(f"layer must be one of {list(range(len(blocks)))} (the model's blocks), got {layer!r}")
    return f"transformer.h.{layer}.{part}"


def edit_dataset(tokenizer, requests: Sequence[EditRequest], paraphrases: bool = False) -> DictDataset:
    """The prompts (and, with ``paraphrases``, their pretraining paraphrases) with ``target_new`` as
    the label of the last token."""
    pairs = [(r.prompt, r.target_new) for r in requests]
    if paraphrases:
        pairs += [(p, r.target_new) for r in requests for p in r.paraphrases[:-1]]  # never the held-out one
    batch = encode(tokenizer, [p for p, _ in pairs])
    return DictDataset({**batch, "target": target_ids(tokenizer, [t for _, t in pairs])})


def last_token_objective():
    """``loss_fn(model, batch)``: cross-entropy of ``batch["target"]`` at each prompt's last token,
    ``-log p(o* | prompt)``."""
    def loss_fn(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(at_last_token(logits, batch["attention_mask"]), batch["target"])
    return loss_fn


class FineTuneEditor:
    """FT (``norm_bound=None``) or FT-L: fine-tune ``layer``'s MLP output weight on a batch of edits.

    Projected gradient descent (Zhu et al., 2020, Eq. 2): after each AdamW step,
    ``W <- clip(W, W_0 - delta, W_0 + delta)`` with ``W_0`` the weight when this call began, so
    ``max |W - W_0| <= delta`` always holds. Defaults: ROME's FT-L recipe (25 steps, the MLP output
    projection of an early layer) with a bound and rate scaled to TinyGPT's weights (mean |w| ~ 0.04).
    """

    paper = "Zhu et al. (2020), Modifying memories in transformer models"
    max_requests = None

    def __init__(self, layer: int = 1, norm_bound: float | None = 5e-3, steps: int = 25, lr: float = 5e-3,
                 part: str = "mlp.c_proj", seed: int = 0):
        self.layer = layer
        self.norm_bound = None if norm_bound is None else checks.positive(norm_bound, "norm_bound")
        self.steps = checks.positive_int(steps, "steps")
        self.lr = checks.positive(lr, "lr")
        self.part = part
        self.seed = checks.integer(seed, "seed", minimum=0)
        self.name = "FT" if norm_bound is None else "FT-L"

    def edit(self, model: nn.Module, tokenizer,
             requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        name = mlp_name(model, self.layer, self.part)
        weight = get_module(model, name).weight
        snapshot = ModelSnapshot(model, parameters=[f"{name}.weight"])
        start = weight.detach().clone()
        delta = self.norm_bound

        def project(step, model):  # Zhu et al. Eq. 2, after every step:
            if delta is not None:      # W <- clip(W, W_0 - delta, W_0 + delta)
                with torch.no_grad():
                    weight.copy_(torch.clamp(weight, start - delta, start + delta))

        model.requires_grad_(False)
        weight.requires_grad_(True)
        fit(model, edit_dataset(tokenizer, requests), loss_fn=last_token_objective(),
            steps=self.steps, batch_size=len(requests), lr=self.lr, params=[weight],
            schedule="constant", device=weight.device, seed=self.seed, progress=False,
            callback=project, every=1)
        snapshot.restore_flags()  # grads and modes as they were; the edit itself stays
        return Edit(model, snapshot.restore, self.name, requests)
