"""LoRA: low-rank adaptation (Hu et al., 2022, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR;
arXiv:2106.09685).

A frozen weight ``W_0`` (``out x in``) is adapted by a trainable low-rank product:

    h = W_0 x + (alpha / r) B A x,     A: (r x in), B: (out x r),  B = 0 at the start

so training begins at the pretrained model. After training, ``B A`` can be **merged** into ``W_0`` (no
inference cost), **unmerged** (back to the adapter), or the layer **unloaded** (the plain base layer,
with or without the merge). As in PEFT: a config (:class:`LoraConfig`), a layer (:class:`LoraLinear`)
and an injector (:func:`inject_lora`); merging, unmerging and unloading are the tuning package's one
API for every layer method (``merge_layers(model)``, ``unmerge_layers``, ``unload_layers``), and
:func:`lora_state_dict` is PEFT's ``get_peft_model_state_dict``: the adapter file.
It wraps ``nn.Linear`` and GPT-2's ``Conv1D`` (whose weight is stored transposed, ``in x out``).

Chapter: notebooks/02a_lora.ipynb (used again in 05_instruction_tuning and 11c_adapter_soup).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import is_conv1d
from .inject import WrappedLayer, check_targets, inject, linear_features, trainable_state_dict, wrapped_layers


@dataclass
class LoraConfig:
    r"""``r``: rank; ``alpha``: scale (the update is multiplied by ``alpha / r``); ``target_modules``: module
    names or name suffixes to adapt (``"c_attn"`` matches every ``...attn.c_attn``), or one regular
    expression matched against whole names (``r".*\.[0-1]\.attn\.c_attn"``); ``dropout`` on the adapter's input."""
    target_modules: Sequence[str] = field(default_factory=list)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self):
        check_targets(self.target_modules)
        self.r, self.alpha, self.dropout = _check_lora(self.r, self.alpha, self.dropout)


def _check_lora(r, alpha, dropout) -> tuple[int, float, float]:
    return (checks.positive_int(r, "r (the rank)"), checks.number(alpha, "alpha"),
            checks.probability(dropout, "dropout", high_open=True))


class LoraLinear(WrappedLayer):
    """``base(x) + (alpha / r) * B(A(dropout(x)))`` around a frozen ``nn.Linear`` or
    GPT-2's ``Conv1D``."""

    mergeable = True

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0):
        r, alpha, dropout = _check_lora(r, alpha, dropout)
        in_f, out_f = linear_features(base)
        if r > min(in_f, out_f):
            raise ValueError(f"rank r={r} exceeds the layer's smaller side "
                             f"({in_f} in, {out_f} out)")
        super().__init__(base)
        self.r, self.scaling = r, alpha / r
        w = base.weight
        like = {"device": w.device, "dtype": w.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, in_f, **like))
        self.lora_B = nn.Parameter(torch.zeros(out_f, r, **like))  # B = 0: start at W_0
        # nn.Linear's default init, as in the paper's code and PEFT
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` in the base layer's layout (``Conv1D``: transposed)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling  # (out, in)
        return delta.T if is_conv1d(self.base) else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        # two thin matmuls, never the (out x in) product B A: the point of a low rank
        a_x = F.linear(self.dropout(x), self.lora_A)  # A x, (..., r)
        low_rank = F.linear(a_x, self.lora_B)  # B A x, (..., out)
        return out + low_rank * self.scaling  # h = W0 x + (alpha / r) B A x

    def _fold(self, inverse: bool) -> None:
        """merge: ``W_0 <- W_0 + (alpha / r) B A`` (no inference cost); unmerge
        subtracts it again."""
        if inverse:
            self.base.weight -= self.delta_weight()
        else:
            self.base.weight += self.delta_weight()  # W = W_0 + (alpha / r) B A


def inject_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Replace every targeted layer of ``model`` (in place) by a :class:`LoraLinear`,
    freeze everything else, and return ``model``. Only ``lora_A`` and ``lora_B``
    train."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, got {type(config).__name__}")

    def wrap(name, layer):
        return LoraLinear(layer, config.r, config.alpha, config.dropout)

    return inject(model, config.target_modules, wrap)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter: the ``lora_A`` and ``lora_B`` tensors of every LoRA layer (what an adapter file
    holds; PEFT's ``get_peft_model_state_dict``)."""
    wrapped_layers(model, LoraLinear)
    return trainable_state_dict(model)
