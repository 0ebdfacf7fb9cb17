"""(IA)^3: Infused Adapter by Inhibiting and Amplifying Inner Activations (Liu et al., 2022, "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", NeurIPS; arXiv:2205.05638).

A learned vector rescales activations element-wise: the keys and values of attention, and the inner
activation of the feed-forward block,

    k = l_k * (W_k x),    v = l_v * (W_v x),    h_ff = W_2 (l_ff * gelu(W_1 x)),     l = 1 at the start

so a layer costs one number per feature (LoRA costs ``r (in + out)``). Both forms are linear in the
weight, so they merge: ``W <- diag(l) W`` (an output scale, bias scaled too) or ``W <- W diag(l)`` (an
input scale, for the ``feedforward_modules``). On a fused ``qkv`` projection (GPT-2's ``c_attn``) the
vector covers the queries too, as in PEFT; the paper's exact form would keep the query part at 1.
Merge, unmerge and unload with the tuning package's one API: ``merge_layers(model, IA3Layer)``.

Chapter: notebooks/02b_adapters.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..hooks import is_conv1d
from .inject import WrappedLayer, check_targets, inject, linear_features, matches


@dataclass
class IA3Config:
    """``target_modules`` get a learned scale; those also in ``feedforward_modules`` scale their *input*
    (the feed-forward block's inner activation), the others their output."""
    target_modules: Sequence[str] = field(default_factory=list)
    feedforward_modules: Sequence[str] = field(default_factory=list)

    def __post_init__(self):
        targets = check_targets(self.target_modules)
        if isinstance(self.feedforward_modules, str) or not isinstance(self.feedforward_modules, Sequence):
            raise TypeError(f"feedforward_modules must be a list of names, got {self.feedforward_modules!r}")
        stray = [] if isinstance(targets, str) else [f for f in self.feedforward_modules if f not in targets]
        if stray:
            raise ValueError(f"feedforward_modules must be a subset of target_modules {targets}; not in it: {stray}")


class IA3Layer(WrappedLayer):
    """``base(x) * l`` (output scaling) or ``base(x * l)`` (``feedforward=True``, input scaling),
    ``l = 1`` at the start."""

    mergeable = True

    def __init__(self, base: nn.Module, feedforward: bool = False):
        if not isinstance(feedforward, bool):
            raise TypeError(f"feedforward must be True or False, got {type(feedforward).__name__}")
        in_f, out_f = linear_features(base)
        super().__init__(base)
        self.feedforward = feedforward
        w = base.weight
        self.ia3_l = nn.Parameter(torch.ones(in_f if feedforward else out_f, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.feedforward:
            return self.base(x * self.ia3_l)  # W (l * x) + b
        return self.base(x) * self.ia3_l  # l * (W x + b)

    def _scale(self, factor: torch.Tensor) -> None:
        # the feature axis of the weight: Linear stores (out, in), Conv1D (in, out)
        in_axis, out_axis = (0, 1) if is_conv1d(self.base) else (1, 0)
        axis = in_axis if self.feedforward else out_axis
        shape = [1, 1]
        shape[axis] = -1
        self.base.weight.mul_(factor.view(shape))
        if not self.feedforward and self.base.bias is not None:
            self.base.bias.mul_(factor)

    def _fold(self, inverse: bool) -> None:
        """merge: ``W <- diag(l) W`` (and ``b <- l * b``), or ``W <- W diag(l)`` for a feed-forward
        input scale; unmerge divides the scale back out (exact up to rounding; a 0 cannot be undone)."""
        if inverse and (self.ia3_l == 0).any():
            raise ValueError("an (IA)^3 scale is exactly 0, so the merged weight cannot be unmerged")
        self._scale(1.0 / self.ia3_l if inverse else self.ia3_l)


def inject_ia3(model: nn.Module, config: IA3Config) -> nn.Module:
    """Wrap every targeted layer of ``model`` (in place) in an :class:`IA3Layer`; only the vectors train."""
    if not isinstance(config, IA3Config):
        raise TypeError(f"config must be an IA3Config, got {type(config).__name__}")
    return inject(model, config.target_modules,
                  lambda name, m: IA3Layer(m, feedforward=matches(name, config.feedforward_modules)))
