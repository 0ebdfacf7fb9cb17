"""Merging with experts: the weight-ensembling mixture of experts (WEMoE).

Tang et al., 2024, "Merging Multi-Task Models via Weight-Ensembling Mixture of Experts", ICML;
arXiv:2402.00433. A static merge gives every input the same weights. WEMoE keeps the task vectors of the
MLP blocks as *experts* and lets a small router choose, for every input, how much of each to add:

    W(x) = W_0 + sum_t r_t(h) tau_t ,     r(h) = mean over tokens of  MLP_router(h)

where ``h`` is the MLP block's input (the hidden states). All other parameters (attention, norms,
embeddings) are merged statically by task arithmetic. The routers are trained like AdaMerging,
by minimising the prediction entropy on unlabeled test inputs; the experts never change.

**Per-task heads** (FusionBench's protocol, which the paper follows): every task keeps its own frozen
head over the shared, merged encoder. :func:`weight_ensembling_moe` given one model per task returns one
model per task that share the expert layers (the same routers) and differ only in their heads;
:func:`train_routers` given those models and one input set per task minimises each task's entropy with
its own head.

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


def _load_merged(model: nn.Module, state_dict: StateDict, what: str) -> nn.Module:
    """A copy of ``model`` with ``state_dict``'s entries loaded; the keys it lacks (a task's own
    head) keep the model's values; a key the model lacks is an error."""
    out = copy.deepcopy(model)
    missing, unexpected = out.load_state_dict(state_dict, strict=False)
    if unexpected:
        raise ValueError(f"{what} has keys the model lacks: {unexpected[:5]} (the same architecture?)")
    return out


def weight_ensembling_moe(model: nn.Module | Sequence[nn.Module], pretrained: StateDict,
                          finetuned: Sequence[StateDict], experts: Sequence[str],
                          dim: int, lam: float = 0.3, init_lambda: float = 0.3
                          ) -> nn.Module | list[nn.Module]:
    """A copy of ``model`` merged by task arithmetic (``lam``) with every module named
    in ``experts`` (the MLP blocks, e.g. ``["blocks.0.mlp", "blocks.1.mlp"]``) replaced
    by a :class:`WeightEnsemblingMLP` over the pretrained and fine-tuned versions of
    that module. Only the routers are trainable.

    Only ``pretrained``'s keys are merged: entries of ``model`` it lacks (a task's own
    head) are kept. Given a list of models, one per task (each with its own head; the
    FusionBench protocol), it returns one model per task; they share the expert
    layers, so they share the routers, and differ only in what ``pretrained`` lacks."""
    many = isinstance(model, (list, tuple))
    models = list(model) if many else [model]
    if not models:
        raise ValueError("model must be a module or a non-empty list of modules (one "
                         "per task)")
    for i, m in enumerate(models):
        checks.module(m, f"model[{i}]" if many else "model")
    check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")])
    if many and len(models) != len(finetuned):
        raise ValueError(f"got {len(models)} task models for {len(finetuned)} "
                         f"fine-tuned state dicts (one per task)")
    if isinstance(experts, str) or len(experts) == 0:
        raise ValueError(f"experts must be a non-empty list of module names (the MLP "
                         f"blocks), got {experts!r}")
    static = task_arithmetic(pretrained, finetuned, lam=lam)
    moes = [_load_merged(m, static, "pretrained").requires_grad_(False) for m in models]

    def block_from(state_dict, name):
        model = _load_merged(models[0], state_dict, "a fine-tuned state dict")
        return get_module(model, name)

    for name in experts:
        get_module(moes[0], name)  # a clear error, with close names, before any expert
        blocks = [block_from(sd, name) for sd in finetuned]
        layer = WeightEnsemblingMLP(block_from(pretrained, name), blocks, dim,
                                    init_lambda).to(device_of(moes[0]))
        for moe in moes:  # one layer object: every task model uses the same router
            set_module(moe, name, layer)
    moes = [moe.eval() for moe in moes]
    return moes if many else moes[0]


def _per_task_loss(models: nn.ModuleList, batch, head: str | None = None) -> torch.Tensor:
    """Mean over the batch of each example's loss under its own task's model: the entropy of its
    prediction, or the cross-entropy with its label when the batch carries labels.

    With ``head`` (the name of the one module in which the task models differ) the shared body runs
    once on the whole batch and each task's head reads its rows, as FusionBench's implementation
    computes the image features once and applies every task's classifier to them."""
    x, task = batch[0], batch[1]
    if head is not None:
        store = {}
        hook = get_module(models[0], head).register_forward_pre_hook(
            lambda module, args: store.__setitem__("h", args[0]))
        try:
            models[0](x)
        finally:
            hook.remove()
    total = 0.0
    for t, model in enumerate(models):
        rows = task == t
        if rows.any():
            logits = model(x[rows]) if head is None else get_module(model, head)(store["h"][rows])
            if len(batch) == 3:
                total = total + nn.functional.cross_entropy(logits, batch[2][rows], reduction="sum")
            else:
                total = total + prediction_entropy(logits) * rows.sum()
    return total / len(x)


def _differ_only_in(models: Sequence[nn.Module], head: str) -> None:
    """Check that the task models share every entry outside the module ``head``."""
    for m in models:
        get_module(m, head)
    first = models[0].state_dict()
    for i, m in enumerate(models[1:], start=1):
        for key, value in m.state_dict().items():
            if key.startswith(f"{head}."):
                continue
            if key not in first or not torch.equal(value, first[key]):
                raise ValueError(f"head={head!r} says the task models differ only in {head!r}, but moe[{i}] "
                                 f"and moe[0] differ in {key!r}")


def train_routers(moe: nn.Module | Sequence[nn.Module], inputs, labels=None, steps: int = 200,
                  lr: float = 1e-3, batch_size: int = 64, seed: int = 0, device=None,
                  head: str | None = None) -> list[float]:
    """Train WEMoE's routers (nothing else) and return the loss of every step.

    Without ``labels`` this is the paper's test-time adaptation: minimise the prediction entropy on
    unlabeled ``inputs`` (a mix of every task's test inputs). With ``labels`` it minimises cross-entropy
    instead: not the paper's method (it needs labels), but an upper bound on what routing can reach.

    ``moe`` may be the list of task models of :func:`weight_ensembling_moe` (one per task, shared
    routers, their own heads); then ``inputs`` (and ``labels``) are lists, one tensor per task, and each
    example's loss is taken with its own task's head (FusionBench's protocol). Batches mix the tasks.
    ``head`` (e.g. ``"head"``), the module in which the task models differ, makes the shared body run
    once per batch instead of once per task (the same result, checked to be so, several times faster).
    """
    many = isinstance(moe, (list, tuple))
    models = list(moe) if many else [moe]
    for i, m in enumerate(models):
        checks.module(m, f"moe[{i}]" if many else "moe")
    routers = list({id(p): p for m in models for layer in m.modules() if isinstance(layer, WeightEnsemblingMLP)
                    for p in layer.router.parameters()}.values())  # shared layers counted once
    if not routers:
        raise ValueError("the model has no WeightEnsemblingMLP: build it with weight_ensembling_moe first")
    if not many:
        if labels is None:
            data, loss_fn = (inputs,), lambda model, batch: prediction_entropy(model(batch[0]))
        else:
            data, loss_fn = (inputs, labels), None  # fit's default: cross-entropy on (x, y)
        return fit(moe, data, loss_fn=loss_fn, params=routers, steps=steps, lr=lr, batch_size=batch_size,
                   seed=seed, device=device, schedule="constant")
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (list, tuple)) or len(inputs) != len(models):
        raise TypeError(f"inputs must be a list of input tensors, one per task model ({len(models)}), got "
                        f"{type(inputs).__name__}" + (f" of {len(inputs)}" if isinstance(inputs, (list, tuple))
                                                      else ""))
    for i, x in enumerate(inputs):
        checks.tensor(x, f"inputs[{i}]")
    task = torch.cat([torch.full((len(x),), t) for t, x in enumerate(inputs)])
    data = (torch.cat(list(inputs)), task)
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or len(labels) != len(inputs):
            raise TypeError(f"labels must be a list of label tensors, one per task model ({len(models)}), got "
                            f"{type(labels).__name__}")
        for i, (x, y) in enumerate(zip(inputs, labels)):
            if len(checks.tensor(y, f"labels[{i}]")) != len(x):
                raise ValueError(f"labels[{i}] has {len(y)} labels for {len(x)} inputs")
        data = (*data, torch.cat(list(labels)))
    if head is not None:
        if not isinstance(head, str):
            raise TypeError(f"head must be a module name (a string), got {type(head).__name__}")
        _differ_only_in(models, head)
    return fit(nn.ModuleList(models), data, loss_fn=lambda m, batch: _per_task_loss(m, batch, head),
               params=routers, steps=steps, lr=lr, batch_size=batch_size, seed=seed, device=device,
               schedule="constant")
