"""LoRA: low-rank adaptation (Hu et al., 2022, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR;
arXiv:2106.09685).

A frozen weight ``W_0`` (``out x in``) is adapted by a trainable low-rank product:

    h = W_0 x + (alpha / r) B A x,     A: (r x in), B: (out x r),  B = 0 at the start

so training begins at the pretrained model. After training, ``B A`` can be **merged** into ``W_0`` (no
inference cost), **unmerged** (back to the adapter), or the layer **unloaded** (the plain base layer,
with or without the merge). As in PEFT: a config (:class:`LoraConfig`), a layer (:class:`LoraLinear`)
and an injector (:func:`inject_lora`, :func:`merge_lora`, :func:`unmerge_lora`, :func:`unload_lora`).
It wraps ``nn.Linear`` and GPT-2's ``Conv1D`` (whose weight is stored transposed, ``in x out``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..hooks import is_conv1d
from .inject import (WrappedLayer, check_targets, inject, linear_features, merge_layers, trainable_state_dict,
                     unload_layers, unmerge_layers, wrapped_layers)


@dataclass
class LoraConfig:
    """``r``: rank; ``alpha``: scale (the update is multiplied by ``alpha / r``); ``target_modules``: module
    names or name suffixes to adapt (``"c_attn"`` matches every ``...attn.c_attn``), or one regular
    expression matched against whole names (``r".*\.[0-1]\.attn\.c_attn"``); ``dropout`` on the adapter's input."""
    target_modules: Sequence[str] = field(default_factory=list)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self):
        check_targets(self.target_modules)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r (the rank) must be a positive int, got {self.r!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


class LoraLinear(WrappedLayer):
    """``base(x) + (alpha / r) * B(A(dropout(x)))`` around a frozen ``nn.Linear`` or ``Conv1D``."""

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        in_f, out_f = linear_features(base)
        if r > min(in_f, out_f):
            raise ValueError(f"rank r={r} exceeds the layer's smaller side ({in_f} in, {out_f} out)")
        super().__init__(base)
        self.r, self.scaling = r, alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, in_f, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_f, r, device=w.device, dtype=w.dtype))  # B = 0: start at W_0
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default, as in the paper's code and PEFT
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` in the base layer's weight layout (transposed for ``Conv1D``)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling  # (out, in)
        return delta.T if is_conv1d(self.base) else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        # two thin matmuls, never the (out x in) product: the whole point of a low rank
        return out + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """``W_0 <- W_0 + (alpha / r) B A``: the adapter costs nothing at inference."""
        if self.merged:
            raise ValueError("this LoRA layer is already merged")
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (``W_0 <- W_0 - (alpha / r) B A``)."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged")
        self.base.weight -= self.delta_weight()
        self.merged = False


def inject_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Replace every targeted layer of ``model`` (in place) by a :class:`LoraLinear`, freeze everything else,
    and return ``model``. Only the ``lora_A``/``lora_B`` parameters remain trainable."""
    return inject(model, config.target_modules, lambda name, m: LoraLinear(m, config.r, config.alpha, config.dropout))


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return wrapped_layers(model, LoraLinear)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer into its base weight (the layers stay, marked merged)."""
    return merge_layers(model, LoraLinear)


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`."""
    return unmerge_layers(model, LoraLinear)


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put the base layers back in place of the LoRA layers, with the update merged (``merge=True``,
    PEFT's ``merge_and_unload``) or dropped (``merge=False``, the pretrained model again)."""
    return unload_layers(model, LoraLinear, merge)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter: the ``lora_A`` and ``lora_B`` tensors of every LoRA layer (what an adapter file holds)."""
    lora_layers(model)
    return trainable_state_dict(model)
