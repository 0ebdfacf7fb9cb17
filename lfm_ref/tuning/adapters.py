"""Bottleneck adapters, Compacter and AdapterFusion: small modules inserted *into* a frozen network.

- **Houlsby adapter** (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP", ICML;
  arXiv:1902.00751): after a sublayer's output ``h`` (attention and feed-forward, before the residual
  sum), ``h <- h + W_up f(W_down h)`` with a bottleneck ``m << d``; ``W_up = 0`` at the start, so the
  network starts as the pretrained one.
- **Compacter** (Karimi Mahabadi et al., 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter
  Layers", NeurIPS; arXiv:2106.04647): the same adapter, each weight a sum of Kronecker products
  ``W = sum_i A_i (x) (s_i t_i^T)`` (a parameterised hypercomplex multiplication, PHM), with the small
  ``n x n`` "rules" ``A_i`` shared by every adapter of the model and rank-``r`` factors per layer.
- **AdapterFusion** (Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for
  Transfer Learning", EACL; arXiv:2005.00247): adapters trained on other tasks stay frozen; at each
  position an attention with the sublayer output ``h`` as query weighs their outputs ``z_k``:
  ``o = sum_k softmax_k((W_Q h)^T (W_K z_k)) W_V z_k``.

None of these is linear in the base weight, so they cannot be merged: they keep an inference cost.
Remove them with the tuning package's one API, ``unload_layers(model, merge=False)``.

Chapter: notebooks/02b_adapters.ipynb.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..utils import device_of
from .inject import WrappedLayer, check_targets, inject, linear_features, wrapped_layers


class BottleneckAdapter(nn.Module):
    """``h + W_up gelu(W_down h)`` (Houlsby et al., 2019), the identity at the start
    (``W_up = 0``)."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        dim = checks.positive_int(dim, "dim")
        bottleneck = checks.positive_int(bottleneck, "bottleneck")
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))  # h + W_up f(W_down h)


class PHMLinear(nn.Module):
    """``y = x W + b`` with ``W = sum_i A_i (x) s_i t_i`` (Kronecker products; Compacter's PHM layer).

    ``rules`` (``n x n x n``: the ``A_i``) may be shared between layers; ``s_i`` is ``(in/n) x r`` and
    ``t_i`` is ``r x (out/n)``, so a layer owns ``n r (in + out) / n + out`` parameters instead of ``in out``.
    """

    def __init__(self, in_features: int, out_features: int, rules: nn.Parameter, rank: int = 1,
                 zero_init: bool = False):
        super().__init__()
        checks.tensor(rules, "rules", dim=3, floating=True)
        rank = checks.positive_int(rank, "rank")
        n = rules.shape[0]
        if in_features % n or out_features % n:
            raise ValueError(f"PHM needs in ({in_features}) and out ({out_features}) features divisible by n={n}")
        self.rules = rules
        self.s = nn.Parameter(torch.randn(n, in_features // n, rank) / math.sqrt(in_features))
        self.t = nn.Parameter(torch.zeros(n, rank, out_features // n) if zero_init
                              else torch.randn(n, rank, out_features // n) / math.sqrt(rank))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def weight(self) -> torch.Tensor:
        n = self.rules.shape[0]
        blocks = self.s @ self.t  # (n, in/n, out/n): B_i = s_i t_i, rank r
        # kron(A_i, B_i)[a p + c, b q + d] = A_i[a, b] B_i[c, d], summed over i
        w = torch.einsum("iab,icd->acbd", self.rules, blocks)
        return w.reshape(n * blocks.shape[1], n * blocks.shape[2])  # (in, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


class CompacterAdapter(nn.Module):
    """A bottleneck adapter whose down and up projections are :class:`PHMLinear` layers."""

    def __init__(self, dim: int, bottleneck: int, rules: nn.Parameter, rank: int = 1):
        super().__init__()
        self.down = PHMLinear(dim, bottleneck, rules, rank)
        self.up = PHMLinear(bottleneck, dim, rules, rank, zero_init=True)  # identity at the start

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))  # h + W_up f(W_down h), PHM weights


@dataclass
class AdapterConfig:
    """``kind``: ``"houlsby"`` or ``"compacter"``; ``target_modules``: the sublayer outputs to adapt
    (GPT-2: ``"c_proj"``, both attention's and the MLP's); ``bottleneck``: the adapter's width;
    Compacter's ``phm_dim`` (``n``) and ``phm_rank`` (``r``)."""
    target_modules: Sequence[str] = field(default_factory=list)
    bottleneck: int = 16
    kind: str = "houlsby"
    phm_dim: int = 4
    phm_rank: int = 1

    def __post_init__(self):
        check_targets(self.target_modules)
        checks.choice(self.kind, "kind", ("houlsby", "compacter"))
        for name in ("bottleneck", "phm_dim", "phm_rank"):
            checks.positive_int(getattr(self, name), name)
        if self.kind == "compacter" and self.bottleneck % self.phm_dim:
            raise ValueError(f"the bottleneck ({self.bottleneck}) must be divisible by phm_dim ({self.phm_dim})")


class AdapterLayer(WrappedLayer):
    """``adapter(base(x))``: the adapter acts on the sublayer's output."""

    def __init__(self, base: nn.Module, adapter: nn.Module):
        super().__init__(base)
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Insert an adapter after every targeted layer of ``model`` (in place) and freeze everything else.
    Compacter's rules ``A_i`` are one parameter shared by all its adapters."""
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    dev = device_of(checks.module(model))
    rules = None
    if config.kind == "compacter":
        n = config.phm_dim
        rules = nn.Parameter(torch.randn(n, n, n, device=dev) / math.sqrt(n))

    def wrap(name, module):
        dim = linear_features(module)[1]
        adapter = (BottleneckAdapter(dim, config.bottleneck) if rules is None
                   else CompacterAdapter(dim, config.bottleneck, rules, config.phm_rank))
        return AdapterLayer(module, adapter.to(dev))

    return inject(model, config.target_modules, wrap)


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{layer name: adapter}`` of an adapted model (what :func:`inject_adapter_fusion` combines)."""
    return {name: layer.adapter for name, layer in wrapped_layers(model, AdapterLayer).items()}


class AdapterFusion(WrappedLayer):
    """Attention over frozen adapters' outputs, the sublayer output as the query (Pfeiffer et al., 2021).

    ``W_Q = 0`` and ``W_V = I`` at the start, so the fusion begins as the plain average of the adapters."""

    def __init__(self, base: nn.Module, adapters: Sequence[nn.Module]):
        super().__init__(base)
        if len(adapters) < 2:
            raise ValueError(f"AdapterFusion combines at least 2 adapters, got {len(adapters)}")
        dim = linear_features(base)[1]
        self.adapters = nn.ModuleList(adapters).requires_grad_(False)
        w = base.weight
        self.query = nn.Linear(dim, dim, device=w.device, dtype=w.dtype)
        self.key = nn.Linear(dim, dim, device=w.device, dtype=w.dtype)
        self.value = nn.Linear(dim, dim, bias=False, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(dim))
        self.last_weights: torch.Tensor | None = None  # the attention of the latest forward, for inspection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        z = torch.stack([adapter(h) for adapter in self.adapters], dim=-2)  # (.., K, d)
        # (W_Q h)^T (W_K z_k), (..., K)
        scores = (self.query(h).unsqueeze(-2) * self.key(z)).sum(-1)
        weights = scores.softmax(-1)  # a_k, (..., K)
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * self.value(z)).sum(-2)  # sum_k a_k W_V z_k


def inject_adapter_fusion(model: nn.Module, adapters: Sequence[Mapping[str, nn.Module]]) -> nn.Module:
    """Wrap the layers of a plain ``model`` in :class:`AdapterFusion` over the given adapter sets, each
    ``{layer name: adapter}`` from :func:`adapter_modules` of a model adapted to another task. Only the
    fusion's query, key and value train. ``unload_layers(model, AdapterFusion, merge=False)`` removes it."""
    adapters = checks.non_empty(adapters, "adapters")
    if not all(isinstance(a, Mapping) for a in adapters):
        raise TypeError("adapters must be a list of {layer name: adapter} dicts (from adapter_modules), got "
                        f"{[type(a).__name__ for a in adapters]}")
    if len(adapters) < 2:
        raise ValueError(f"AdapterFusion needs at least 2 adapter sets, got {len(adapters)}")
    names = set(adapters[0])
    for i, a in enumerate(adapters[1:], 1):
        if set(a) != names:
            raise ValueError(f"adapter set {i} adapts {sorted(a)}, but set 0 adapts {sorted(names)}")
    return inject(model, sorted(names), lambda name, m: AdapterFusion(m, [copy.deepcopy(a[name]) for a in adapters]))
