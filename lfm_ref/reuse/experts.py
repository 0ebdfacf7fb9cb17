"""Merging with experts: the weight-ensembling mixture of experts (WEMoE).

Tang et al., 2024, "Merging Multi-Task Models via Weight-Ensembling Mixture of Experts", ICML;
arXiv:2402.00433. A static merge gives every input the same weights. WEMoE keeps the task vectors of the
MLP blocks as *experts* and lets a small router choose, for every input, how much of each to add:

    W(x) = W_0 + sum_t r_t(h) tau_t ,     r(h) = mean over tokens of  MLP_router(h)

where ``h`` is the MLP block's input (the hidden states). All other parameters (attention, norms,
embeddings, head) are merged statically by task arithmetic. The routers are trained like AdaMerging,
by minimising the prediction entropy on unlabeled test inputs; the experts never change.

Chapter: notebooks/13_merging_with_experts.ipynb
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from .. import checks
from ..hooks import get_module, set_module
from ..state_dicts import StateDict, check_state_dicts
from ..train import fit
from ..utils import device_of
from .merging import task_arithmetic
from .merging_with_data import prediction_entropy


class WeightEnsemblingMLP(nn.Module):
    """One MLP block whose weights are ``theta_0 + sum_t r_t(x) tau_t``, with ``r`` computed per example.

    ``pretrained`` and ``finetuned`` are the block's modules (for instance ``vit.blocks[0].mlp``) taken
    from the pretrained and the fine-tuned models. The router is the paper's: two linear layers with a
    ReLU, its last bias set to ``init_lambda`` and its weights near zero, so that training starts from task
    arithmetic with ``lam = init_lambda``. Inputs are ``(batch, tokens, dim)`` (or ``(batch, dim)``).
    """

    def __init__(self, pretrained: nn.Module, finetuned: Sequence[nn.Module], dim: int, init_lambda: float = 0.3):
        super().__init__()
        if not isinstance(pretrained, nn.Module) or not all(isinstance(m, nn.Module) for m in finetuned):
            raise TypeError("WeightEnsemblingMLP takes the pretrained block and a list of fine-tuned blocks "
                            "(nn.Module)")
        base = pretrained.state_dict()
        check_state_dicts([base, *check_state_dicts([m.state_dict() for m in finetuned], "finetuned blocks")])
        init_lambda = checks.number(init_lambda, "init_lambda")
        dim = checks.positive_int(dim, "dim")
        self.block = copy.deepcopy(pretrained).requires_grad_(False)  # the architecture and theta_0
        self.names = [n for n, _ in self.block.named_parameters()]
        for i, name in enumerate(self.names):  # (T, ...) stack of the experts' task vectors for this tensor
            tau = torch.stack([dict(m.named_parameters())[name].detach() for m in finetuned]) - base[name]
            self.register_buffer(f"tau_{i}", tau)
        self.router = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, len(finetuned)))
        for layer in (self.router[0], self.router[2]):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.router[2].bias, init_lambda)

    @property
    def n_experts(self) -> int:
        return len(self.tau_0)

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights ``(batch, experts)``: the router on every token, averaged over the tokens."""
        r = self.router(x)
        return r.mean(1) if r.dim() == 3 else r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.router[0].in_features
        if x.shape[-1] != features:
            raise ValueError(f"WeightEnsemblingMLP expects inputs with {features} "
                             f"features in the last dimension, got shape "
                             f"{tuple(x.shape)}")
        r = self.routing(x)  # (B, T)
        theta = dict(self.block.named_parameters())
        # per-example weights theta_0 + sum_t r_bt tau_t, (B, ...) for every tensor
        params = {name: theta[name] + torch.einsum("bt,t...->b...", r,
                                                   getattr(self, f"tau_{i}"))
                  for i, name in enumerate(self.names)}

        # vmap runs this for every example at once: no Python loop over the batch
        def one_example(p, xb):
            return functional_call(self.block, p, (xb.unsqueeze(0),)).squeeze(0)

        return vmap(one_example)(params, x)


def weight_ensembling_moe(model: nn.Module, pretrained: StateDict,
                          finetuned: Sequence[StateDict], experts: Sequence[str],
                          dim: int, lam: float = 0.3, init_lambda: float = 0.3
                          ) -> nn.Module:
    """A copy of ``model`` merged by task arithmetic (``lam``) with every module named
    in ``experts`` (the MLP blocks, e.g. ``["blocks.0.mlp", "blocks.1.mlp"]``) replaced
    by a :class:`WeightEnsemblingMLP` over the pretrained and fine-tuned versions of
    that module. Only the routers are trainable."""
    checks.module(model)
    check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")])
    if isinstance(experts, str) or len(experts) == 0:
        raise ValueError(f"experts must be a non-empty list of module names (the MLP "
                         f"blocks), got {experts!r}")
    moe = copy.deepcopy(model)
    moe.load_state_dict(task_arithmetic(pretrained, finetuned, lam=lam))
    moe.requires_grad_(False)

    def block_from(state_dict, name):
        m = copy.deepcopy(model)
        m.load_state_dict(state_dict)
        return get_module(m, name)

    for name in experts:
        get_module(moe, name)  # a clear error, with close names, before any expert
        blocks = [block_from(sd, name) for sd in finetuned]
        layer = WeightEnsemblingMLP(block_from(pretrained, name), blocks, dim,
                                    init_lambda)
        set_module(moe, name, layer.to(device_of(moe)))
    return moe.eval()


def train_routers(moe: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None, steps: int = 200,
                  lr: float = 1e-3, batch_size: int = 64, seed: int = 0, device=None) -> list[float]:
    """Train WEMoE's routers (nothing else) and return the loss of every step.

    Without ``labels`` this is the paper's test-time adaptation: minimise the prediction entropy on
    unlabeled ``inputs`` (a mix of every task's test inputs). With ``labels`` it minimises cross-entropy
    instead: not the paper's method (it needs labels), but an upper bound on what routing can reach.
    """
    routers = [p for m in moe.modules() if isinstance(m, WeightEnsemblingMLP) for p in m.router.parameters()]
    if not routers:
        raise ValueError("the model has no WeightEnsemblingMLP: build it with weight_ensembling_moe first")
    if labels is None:
        data, loss_fn = (inputs,), lambda model, batch: prediction_entropy(model(batch[0]))
    else:
        data, loss_fn = (inputs, labels), None  # fit's default: cross-entropy on (x, y)
    return fit(moe, data, loss_fn=loss_fn, params=routers, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
               device=device, schedule="constant")
