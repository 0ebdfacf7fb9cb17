"""Merges that need more than the weights: the models themselves, run on unlabeled inputs.

Chapter: notebooks/11_merging.ipynb (sections on Fisher merging, RegMean and AdaMerging).

- :func:`diagonal_fisher` feeds :func:`lfm_ref.reuse.merging.fisher_merge` (Matena & Raffel, 2022,
  NeurIPS; arXiv:2111.09832): each model's diagonal Fisher on its own unlabeled inputs, with labels
  drawn from its own predictions.
- :func:`regmean`: RegMean (Jin et al., 2023, ICLR; arXiv:2212.09849), the closed-form merge of every
  linear layer that best reproduces all models' outputs on their own inputs (:func:`gram_matrices`).
- :func:`adamerging`: AdaMerging (Yang et al., 2024, ICLR; arXiv:2310.02575), task-arithmetic
  coefficients per task and per layer learned by minimising :func:`prediction_entropy` on unlabeled
  test inputs.

**Per-task heads** (FusionBench's protocol, chapter 11): each task keeps its own frozen head and only
the shared encoder is merged. Every function here takes ``keys``, the state-dict keys to merge (the
encoder's): Fisher and RegMean run each model with its own head and merge only those keys; AdaMerging
takes one model per task (``model`` a list) and scores each task's entropy with that task's model.

Each function leaves the models it runs in the train/eval mode it found them in.
"""
from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence

import torch

from .. import checks
from ..hooks import is_conv1d
from ..state_dicts import StateDict, check_state_dicts, is_weight
from ..utils import device_of, eval_mode
from .merging import weighted_average

__all__ = ["adamerging", "diagonal_fisher", "gram_matrices", "prediction_entropy", "regmean"]


def _input_sets(inputs, count: int, what: str) -> list[torch.Tensor]:
    """One tensor of unlabeled inputs per model (or task), checked."""
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (list, tuple)):
        raise TypeError(f"{what} must be a list of input tensors, one per model, got "
                        f"{type(inputs).__name__}")
    if len(inputs) != count:
        raise ValueError(f"got {len(inputs)} {what} for {count} models (one per model)")
    for i, x in enumerate(inputs):
        checks.tensor(x, f"{what}[{i}]")
        if len(x) == 0:
            raise ValueError(f"{what}[{i}] is empty")
    return list(inputs)


def _check_keys(keys, available, what: str) -> set[str] | None:
    """``keys`` (the state-dict keys to merge) as a set, each one of ``available``; ``None`` stays ``None``."""
    if keys is None:
        return None
    if isinstance(keys, (str, torch.Tensor)) or not isinstance(keys, Collection):
        raise TypeError(f"keys must be a collection of state-dict keys (e.g. the encoder's), got "
                        f"{type(keys).__name__}")
    keys = set(keys)
    missing = sorted(keys - set(available))
    if missing:
        raise ValueError(f"keys must be keys of {what}; it lacks {missing[:5]}")
    return keys


# ----- Fisher ------------------------------------------------------------------------------------
def diagonal_fisher(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 64,
                    keys: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """The diagonal of the model's Fisher information on ``inputs``, with labels from its own
    predictions (Matena & Raffel, 2022, eq. 3 with the expectation over labels taken exactly):

        F = E_x sum_y p(y|x) (d log p(y|x) / d theta)^2

    computed exactly over the classes with per-example gradients (``torch.func``), in eval mode.
    ``keys`` restricts it to those parameters (the shared encoder's, when each task has its own head:
    the model's predictions still use its head); by default every parameter.
    """
    from torch.func import functional_call, grad, vmap

    checks.module(model)
    checks.tensor(inputs, "inputs")
    batch_size = checks.positive_int(batch_size, "batch_size")
    keys = _check_keys(keys, dict(model.named_parameters()), "the model's parameters")
    params = {k: v.detach() for k, v in model.named_parameters() if keys is None or k in keys}
    # everything else (buffers, and the parameters outside keys) is held fixed
    fixed = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items() if k not in params}
    dev = device_of(model)

    def log_prob(p, x, y):
        logits = functional_call(model, (p, fixed), (x.unsqueeze(0),))
        # gather, not indexing: indexing cannot be vmapped
        return torch.log_softmax(logits, -1)[0].gather(0, y.view(1))[0]

    per_example = vmap(grad(log_prob), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    with eval_mode(model):
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size].to(dev)
            with torch.no_grad():
                probs = model(x).softmax(-1)  # (B, K)
            for y in range(probs.shape[1]):  # the expectation over labels, a class at a time
                with warnings.catch_warnings():  # vmap runs attention unbatched: slower, exact
                    warnings.filterwarnings("ignore", message=".*performance drop.*")
                    grads = per_example(params, x, torch.full((len(x),), y, device=dev))
                for k, g in grads.items():
                    # F += p(y|x) (d log p(y|x) / d theta)^2, summed over the batch
                    fisher[k] += (probs[:, y].to(g).view(-1, *[1] * (g.dim() - 1)) * g.pow(2)).sum(0)
    return {k: v / len(inputs) for k, v in fisher.items()}


# ----- RegMean -----------------------------------------------------------------------------------
def _linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``nn.Linear`` layers and GPT-2's ``Conv1D`` (which stores its weight transposed: ``in x out``)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) or is_conv1d(m)}


@torch.no_grad()
def gram_matrices(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 256,
                  layers: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """``G = X^T X`` of the inputs ``X`` (rows: every position of every example) of each linear
    layer (or of the named ``layers``), in float64."""
    checks.module(model)
    checks.tensor(inputs, "inputs")
    batch_size = checks.positive_int(batch_size, "batch_size")
    every = _linear_layers(model)
    wanted = _check_keys(layers, every, "the model's linear layers")
    layers = {n: m for n, m in every.items() if wanted is None or n in wanted}
    grams: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()  # (B * T, in)
            grams[name] = grams.get(name, 0) + x.T @ x           # G += X^T X
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    dev = device_of(model)
    try:
        with eval_mode(model):
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
    return grams


def regmean(models: Sequence[torch.nn.Module], inputs: Sequence[torch.Tensor],
            off_diagonal: float = 0.9, keys: Collection[str] | None = None
            ) -> dict[str, torch.Tensor]:
    """RegMean: for every linear layer ``y = x W^T``, the ``W`` that minimises
    ``sum_i ||X_i W^T - X_i W_i^T||^2``,

        W* = (sum_i W_i G_i) (sum_i G_i)^-1,    G_i = X_i^T X_i (off-diagonals scaled),

    where ``X_i`` are the layer's inputs in model ``i`` on model ``i``'s own (unlabeled)
    ``inputs[i]``. ``off_diagonal`` (the paper's alpha) scales the Gram matrices' off-diagonal
    entries: ``off_diagonal < 1`` also keeps the system solvable where ``X^T X`` is singular (inputs
    that come out of a LayerNorm sum to zero over features, for instance). Every other parameter
    (biases, norms, embeddings) is averaged.

    ``keys`` restricts the merge to those state-dict keys (the shared encoder's, when each model has
    its own task head: each model still runs with its head, and the result holds ``keys`` only).
    """
    models = checks.non_empty(models, "models")
    for i, m in enumerate(models):
        checks.module(m, f"models[{i}]")
    inputs = _input_sets(inputs, len(models), "inputs")
    off_diagonal = checks.number(off_diagonal, "off_diagonal", low=0.0, high=1.0)
    states = [m.state_dict() for m in models]
    for i, state in enumerate(states):
        _check_keys(keys, state, f"models[{i}]'s state dict")
    keys = _check_keys(keys, states[0], "models[0]'s state dict")
    out = weighted_average([{k: v for k, v in sd.items() if keys is None or k in keys} for sd in states])
    merged_layers = [n for n in _linear_layers(models[0]) if keys is None or f"{n}.weight" in keys]
    grams = [gram_matrices(m, x, layers=merged_layers) for m, x in zip(models, inputs)]
    layers = [_linear_layers(m) for m in models]
    for name in merged_layers:
        layer = layers[0][name]
        transposed = is_conv1d(layer)  # Conv1D computes x W with W of shape (in, out)
        weighted, total = 0, 0
        for model_layers, g in zip(layers, grams):
            g = g[name]
            # G <- a G + (1 - a) diag(G): shrink the off-diagonals towards 0
            g = off_diagonal * g + (1 - off_diagonal) * torch.diag(torch.diag(g))
            w = model_layers[name].weight.detach().double()
            weighted = weighted + (g @ w if transposed else w @ g)  # sum_i W_i G_i
            total = total + g                                       # sum_i G_i
        # W* = (sum_i W_i G_i) (sum_i G_i)^-1, as a linear solve
        merged = (torch.linalg.solve(total, weighted) if transposed
                  else torch.linalg.solve(total, weighted.T).T)
        out[f"{name}.weight"] = merged.to(layer.weight.dtype)
    return out


# ----- AdaMerging --------------------------------------------------------------------------------
def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(logits))`` averaged over the rows: the test-time objective of AdaMerging and
    WEMoE."""
    checks.tensor(logits, "logits", floating=True)
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1).mean()  # -(1/B) sum_b sum_y p log p


def _task_models(model, count: int | None) -> list[torch.nn.Module]:
    """One model per task: ``model`` repeated, or the list given (one per task), checked."""
    if isinstance(model, torch.nn.Module):
        return [model] * (count or 1)
    if not isinstance(model, (list, tuple)) or not model:
        raise TypeError(f"model must be a torch.nn.Module or a list of them (one per task), got "
                        f"{type(model).__name__}")
    for i, m in enumerate(model):
        checks.module(m, f"model[{i}]")
    if count is not None and len(model) != count:
        raise ValueError(f"got {len(model)} models for {count} fine-tuned state dicts (one per task)")
    return list(model)


def adamerging(model: torch.nn.Module | Sequence[torch.nn.Module],
               pretrained: StateDict, finetuned: Sequence[StateDict],
               unlabeled: Sequence[torch.Tensor],
               steps: int = 500, lr: float = 1e-3, lam: float = 0.3,
               batch_size: int = 16, seed: int = 0
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Layer-wise AdaMerging: ``theta_l = theta_0,l + sum_t lam_{t,l} tau_{t,l}``, one
    coefficient per task and per parameter tensor in [0, 1], starting at ``lam`` and
    learned by minimising the mean prediction entropy on unlabeled inputs of every task:

        min_lam  sum_t E_{x in task t} H( softmax f(x; theta(lam)) )

    ``model`` is any instance of the architecture (its weights are not used), or one
    model per task (FusionBench's protocol: each task's entropy is that of its own
    model, i.e. its own frozen head): the keys of ``pretrained`` (the shared encoder)
    are merged and replaced in each model, every other parameter of a model (its
    head) is its own. Returns the merged state dict (``pretrained``'s keys) and the
    coefficients of shape ``(tasks, parameter tensors)``; buffers (BatchNorm
    statistics) are merged by task arithmetic with ``lam``.
    """
    from torch.func import functional_call

    count = len(finetuned) if isinstance(finetuned, (list, tuple)) else None
    models = _task_models(model, count)  # one per task
    check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")])
    unlabeled = _input_sets(unlabeled, len(finetuned), "unlabeled input sets")
    steps, lr = checks.integer(steps, "steps", minimum=0), checks.positive(lr, "lr")
    lam = checks.number(lam, "lam")
    batch_size = checks.positive_int(batch_size, "batch_size")
    generator = torch.Generator().manual_seed(checks.integer(seed, "seed"))
    stacked = {key: torch.stack([sd[key] for sd in finetuned]).sub_(value)  # (T, ...)
               for key, value in pretrained.items() if is_weight(value)}
    learned = dict(models[0].named_parameters())
    keys = [k for k in stacked if k in learned]
    if not keys:
        raise ValueError("pretrained shares no parameter with model: pass the "
                         "architecture's state dict (or its encoder's)")
    # buffers (BatchNorm statistics) are not learned: task arithmetic with lam
    fixed = {k: v + lam * stacked[k].sum(0) if k in stacked and k not in learned
             else v.clone() for k, v in pretrained.items()}
    dev = stacked[keys[0]].device
    coeffs = torch.full((len(finetuned), len(keys)), lam, device=dev,
                        requires_grad=True)
    optimizer = torch.optim.Adam([coeffs], lr=lr)

    def merged(c):  # theta_l = theta_0,l + sum_t c_{t,l} tau_{t,l}
        out = {}
        for i, k in enumerate(keys):
            tau = stacked[k]                                         # (T, ...)
            c_k = c[:, i].to(tau).view(-1, *[1] * (tau.dim() - 1))  # (T, 1, ...)
            out[k] = pretrained[k] + (c_k * tau).sum(0)
        return out

    with eval_mode(*set(models)):
        for _ in range(steps):
            params = merged(coeffs.clamp(0.0, 1.0))  # the paper's code clamps to [0, 1]
            loss = 0
            for task_model, x in zip(models, unlabeled):
                idx = torch.randint(len(x), (batch_size,), generator=generator)
                # the merged keys replace the model's; the rest (its head) stays its own
                logits = functional_call(task_model, {**fixed, **params},
                                         (x[idx].to(dev),))
                loss = loss + prediction_entropy(logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    final = coeffs.detach().clamp(0.0, 1.0)
    with torch.no_grad():
        return {**fixed, **merged(final)}, final
