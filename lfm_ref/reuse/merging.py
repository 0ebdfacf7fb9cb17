"""Merging models in weight space: one state dict out of several, without training data.

Every function takes and returns state dicts (``model.state_dict()``), so it works on any PyTorch or
Hugging Face model. Fine-tuned models share one pretrained start ``theta_0``; a fine-tuned model's
**task vector** is ``tau_t = theta_t - theta_0`` (Ilharco et al., 2023, "Editing Models with Task
Arithmetic", ICLR; arXiv:2212.04089).

- :func:`weighted_average`: ``theta = sum_t w_t theta_t / sum_t w_t``. Uniform weights give simple
  averaging and the uniform model soup (Wortsman et al., 2022); weights proportional to client data
  give FedAvg's server step (McMahan et al., 2017); the checkpoints of one run give SWA (Izmailov et al.,
  2018) and, restricted to the latest ones, LAWA (Kaddour, 2022).
- :func:`task_arithmetic`: ``theta = theta_0 + lam * sum_t tau_t`` (a negative ``lam`` forgets).
- :func:`ties_merge`: TIES-merging (Yadav et al., 2023, NeurIPS; arXiv:2306.01708): trim, elect sign,
  disjoint mean.
- :func:`dare`: DARE (Yu et al., 2024, ICML; arXiv:2311.03099): drop each delta with probability ``p``
  and rescale the rest by ``1 / (1 - p)``; combine with task arithmetic or TIES.
- :func:`fisher_merge`: Fisher-weighted averaging (Matena & Raffel, 2022, NeurIPS; arXiv:2111.09832).
- :func:`regmean`: RegMean (Jin et al., 2023, ICLR; arXiv:2212.09849), the closed-form merge of every
  linear layer that best reproduces all models' outputs on their own inputs.
- :func:`adamerging`: AdaMerging (Yang et al., 2024, ICLR; arXiv:2310.02575), task-arithmetic
  coefficients per task and per layer learned by minimising prediction entropy on unlabeled test inputs.

Integer buffers (such as BatchNorm's ``num_batches_tracked``) are not weights: they are copied from the
first model (or from ``theta_0``) unchanged.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import torch

from ..hooks import is_conv1d

StateDict = Mapping[str, torch.Tensor]


# ----- checks shared by every method ---------------------------------------------------------------
def check_state_dicts(state_dicts: Sequence[StateDict], what: str = "state dicts") -> list[StateDict]:
    """Raise a clear error unless ``state_dicts`` is a non-empty list of dicts with equal keys, shapes and devices."""
    if isinstance(state_dicts, Mapping) or not isinstance(state_dicts, (list, tuple)):
        raise TypeError(f"{what} must be a list of state dicts (model.state_dict()), got {type(state_dicts).__name__}")
    if len(state_dicts) == 0:
        raise ValueError(f"{what} is empty: there is nothing to merge")
    for i, sd in enumerate(state_dicts):
        if not isinstance(sd, Mapping):
            raise TypeError(f"{what}[{i}] must be a state dict (model.state_dict()), got {type(sd).__name__}; "
                            "pass model.state_dict() rather than the model")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        if sd.keys() != first.keys():
            missing, extra = sorted(set(first) - set(sd)), sorted(set(sd) - set(first))
            raise ValueError(f"{what}[{i}] has different keys from {what}[0]: missing {missing[:5]}, "
                             f"unexpected {extra[:5]} (are they the same architecture?)")
        for key, value in sd.items():
            if value.shape != first[key].shape:
                raise ValueError(f"{what}[{i}][{key!r}] has shape {tuple(value.shape)} but {what}[0] has "
                                 f"{tuple(first[key].shape)}")
            if value.device != first[key].device:
                raise ValueError(f"{what}[{i}][{key!r}] is on {value.device} but {what}[0] is on "
                                 f"{first[key].device}; move every model to one device first")
    return list(state_dicts)


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number (int or float), got {type(value).__name__} ({value!r})")
    return float(value)


def _is_weight(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of shape ``(T,)`` reshaped to broadcast over the ``(T, ...)`` stack ``like``."""
    return values.to(like).view(-1, *[1] * (like.dim() - 1))


def _kth_largest(flat: torch.Tensor, density: float) -> torch.Tensor:
    """The magnitude below which ``flat`` loses all but its ``density`` fraction of largest entries."""
    keep = max(1, int(density * flat.numel()))
    return flat.kthvalue(flat.numel() - keep + 1).values  # the keep-th largest value


# ----- task vectors ----------------------------------------------------------------------------
def task_vector(pretrained: StateDict, finetuned: StateDict) -> dict[str, torch.Tensor]:
    """``tau = theta_ft - theta_0`` for every floating-point entry."""
    check_state_dicts([pretrained, finetuned], "[pretrained, finetuned]")
    return {k: finetuned[k] - pretrained[k] for k in pretrained if _is_weight(pretrained[k])}


def add_task_vectors(pretrained: StateDict, vectors: Sequence[Mapping[str, torch.Tensor]], lam: float = 1.0
                     ) -> dict[str, torch.Tensor]:
    """``theta_0 + lam * sum_t tau_t``; entries without a task vector are copied from ``theta_0``."""
    lam = _check_number(lam, "lam")
    if len(vectors) == 0:
        raise ValueError("no task vectors to add")
    total = {k: torch.stack([v[k] for v in vectors]).sum(0) for k in vectors[0]}
    return {k: (v + lam * total[k]).to(v.dtype) if k in total else v.clone() for k, v in pretrained.items()}


# ----- the methods -----------------------------------------------------------------------------
def weighted_average(state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """``sum_t w_t theta_t / sum_t w_t`` (uniform by default): averaging, uniform soup, SWA, LAWA, FedAvg."""
    state_dicts = check_state_dicts(state_dicts)
    if weights is None:
        weights = [1.0] * len(state_dicts)
    if len(weights) != len(state_dicts):
        raise ValueError(f"got {len(weights)} weights for {len(state_dicts)} state dicts")
    w = torch.tensor([_check_number(x, "each weight") for x in weights], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    out = {}
    for key, first in state_dicts[0].items():
        if not _is_weight(first):
            out[key] = first.clone()
            continue
        stacked = torch.stack([sd[key] for sd in state_dicts])
        out[key] = (_per_row(w, stacked) * stacked).sum(0)
    return out


def _task_vectors_by_key(pretrained: StateDict, finetuned: Sequence[StateDict]):
    """``(key, theta_0[key], tau)`` for every weight, with ``tau`` the ``(T, ...)`` stack of the task vectors'
    entries for that key: one key at a time, so a merge never holds all T task vectors in memory."""
    for key, value in pretrained.items():
        if _is_weight(value):
            yield key, value, torch.stack([sd[key] for sd in finetuned]).sub_(value)


def _merge_by_key(pretrained: StateDict, finetuned: Sequence[StateDict], merge_key) -> dict[str, torch.Tensor]:
    """``theta_0`` with every weight replaced by ``merge_key(key, theta_0[key], tau)``; buffers copied."""
    merged = {key: merge_key(key, value, tau) for key, value, tau in _task_vectors_by_key(pretrained, finetuned)}
    return {key: merged[key] if key in merged else value.clone() for key, value in pretrained.items()}


def task_arithmetic(pretrained: StateDict, finetuned: Sequence[StateDict], lam: float = 0.3) -> dict[str, torch.Tensor]:
    """Task arithmetic: ``theta_0 + lam * sum_t (theta_t - theta_0)``; ``lam < 0`` negates (forgets) tasks."""
    check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")])
    lam = _check_number(lam, "lam")
    out = {}
    for key, theta0 in pretrained.items():
        if not _is_weight(theta0):
            out[key] = theta0.clone()
            continue
        # sum_t (theta_t - theta_0) = sum_t theta_t - T theta_0: one accumulator, no (T, ...) stack
        total = finetuned[0][key].clone()
        for sd in finetuned[1:]:
            total += sd[key]
        out[key] = total.sub_(theta0, alpha=len(finetuned)).mul_(lam).add_(theta0)
    return out


def _check_density(density: float, scope: str) -> float:
    density = _check_number(density, "density")
    if not 0 < density <= 1:
        raise ValueError(f"density (the fraction of entries kept) must lie in (0, 1], got {density}")
    if scope not in ("model", "tensor"):
        raise ValueError(f"scope must be 'model' or 'tensor', got {scope!r}")
    return density


def _top_rows(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``density`` largest-magnitude entries of each row (task) of ``tau``."""
    flat = tau.reshape(len(tau), -1)
    keep = int(density * flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.abs().topk(keep, dim=1).indices, True)
    return tau * mask.view_as(tau)


def _magnitude_thresholds(pretrained: StateDict, finetuned: Sequence[StateDict], density: float) -> torch.Tensor:
    """For each task vector, the magnitude of its ``density``-th largest entry over the whole model."""
    thresholds = []
    for sd in finetuned:
        thresholds.append(_kth_largest(torch.cat([(sd[k] - v).abs().flatten() for k, v in pretrained.items()
                                                  if _is_weight(v)]), density))
    return torch.stack(thresholds)


def trim(vector: Mapping[str, torch.Tensor], density: float, scope: str = "model") -> dict[str, torch.Tensor]:
    """Keep the ``density`` fraction of entries of one task vector with the largest magnitude, zero the rest.

    ``scope="model"`` ranks all entries of the task vector together (the TIES paper and fusion-bench);
    ``scope="tensor"`` ranks within each tensor (PEFT and mergekit).
    """
    density = _check_density(density, scope)
    if density == 1:
        return dict(vector)
    if scope == "tensor":
        return {k: _top_rows(v[None], density)[0] for k, v in vector.items()}
    threshold = _kth_largest(torch.cat([v.abs().flatten() for v in vector.values()]), density)
    return {k: v * (v.abs() >= threshold) for k, v in vector.items()}


def _disjoint_mean(tau: torch.Tensor) -> torch.Tensor:
    """TIES's elect and disjoint-merge steps on the ``(T, ...)`` stack of (trimmed) task-vector entries."""
    sign = torch.where(tau.sum(0) >= 0, 1.0, -1.0).to(tau)  # gamma = sgn(sum_t tau_t)
    agree = (tau != 0) & (tau.sign() == sign)
    return (tau * agree).sum(0) / agree.sum(0).clamp(min=1)  # mean over the tasks that agree with gamma


def ties_disjoint_mean(vectors: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """TIES's elect and disjoint-merge steps on (trimmed) task vectors."""
    return {key: _disjoint_mean(torch.stack([v[key] for v in vectors])) for key in vectors[0]}


def ties_merge(pretrained: StateDict, finetuned: Sequence[StateDict], density: float = 0.2, lam: float = 1.0,
               scope: str = "model") -> dict[str, torch.Tensor]:
    """TIES-merging: trim each task vector to its top ``density`` entries, elect a sign per parameter
    (the sign of the summed trimmed vectors), average only the entries that agree with it, and add
    ``lam`` times the result to ``theta_0``."""
    check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")])
    density, lam = _check_density(density, scope), _check_number(lam, "lam")
    if density < 1 and scope == "model":
        thresholds = _magnitude_thresholds(pretrained, finetuned, density)

    def merge_key(key, theta0, tau):
        if density < 1:
            if scope == "tensor":
                tau = _top_rows(tau, density)
            else:
                tau = tau * (tau.abs() >= _per_row(thresholds, tau))
        return theta0 + lam * _disjoint_mean(tau)

    return _merge_by_key(pretrained, finetuned, merge_key)


def _check_drop_rate(p: float) -> float:
    p = _check_number(p, "p")
    if not 0 <= p < 1:
        raise ValueError(f"p (the drop rate) must lie in [0, 1), got {p}")
    return p


def _drop_and_rescale(tau: torch.Tensor, p: float, generator: torch.Generator | None, rescale: bool = True):
    # masks are drawn on the CPU generator, so one seed gives the same mask on every device
    keep = torch.bernoulli(torch.full(tau.shape, 1 - p), generator=generator).to(tau.device, tau.dtype)
    tau = tau * keep
    return tau.div_(1 - p) if rescale else tau  # m ~ Bernoulli(1 - p);  tau * m / (1 - p)


def dare(vector: Mapping[str, torch.Tensor], p: float, seed: int | None = None, rescale: bool = True
         ) -> dict[str, torch.Tensor]:
    """DARE: drop each entry with probability ``p`` and rescale the survivors by ``1 / (1 - p)``,
    so that the expectation of the result is the input."""
    p = _check_drop_rate(p)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return {k: _drop_and_rescale(v, p, generator, rescale) for k, v in vector.items()}


def dare_merge(pretrained: StateDict, finetuned: Sequence[StateDict], p: float = 0.9, lam: float = 0.3,
               then: str = "task_arithmetic", density: float = 1.0, seed: int | None = 0) -> dict[str, torch.Tensor]:
    """DARE on every task vector, then task arithmetic (``then="task_arithmetic"``) or TIES (``"ties"``,
    trimming each tensor to ``density``)."""
    check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")])
    if then not in ("task_arithmetic", "ties"):
        raise ValueError(f"then must be 'task_arithmetic' or 'ties', got {then!r}")
    p, lam, density = _check_drop_rate(p), _check_number(lam, "lam"), _check_density(density, "tensor")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def merge_key(key, theta0, tau):
        tau = _drop_and_rescale(tau, p, generator)
        if then == "task_arithmetic":
            return theta0 + lam * tau.sum(0)
        return theta0 + lam * _disjoint_mean(_top_rows(tau, density) if density < 1 else tau)

    return _merge_by_key(pretrained, finetuned, merge_key)


def fisher_merge(state_dicts: Sequence[StateDict], fishers: Sequence[Mapping[str, torch.Tensor]],
                 eps: float = 1e-8) -> dict[str, torch.Tensor]:
    """Fisher merging: ``theta = sum_t F_t * theta_t / sum_t F_t`` per parameter, with diagonal Fishers
    ``F_t`` (see :func:`diagonal_fisher`); entries without a Fisher are averaged uniformly."""
    state_dicts = check_state_dicts(state_dicts)
    if len(fishers) != len(state_dicts):
        raise ValueError(f"got {len(fishers)} Fishers for {len(state_dicts)} state dicts")
    out = weighted_average(state_dicts)
    for key in fishers[0]:
        if key not in out:
            raise ValueError(f"a Fisher has the key {key!r}, which the state dicts lack")
        f = torch.stack([fi[key] for fi in fishers]) + eps
        out[key] = (f * torch.stack([sd[key] for sd in state_dicts])).sum(0) / f.sum(0)
    return out


def diagonal_fisher(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The diagonal of the model's Fisher information on ``inputs``, with labels from its own predictions:

        F = E_x sum_y p(y|x) (d log p(y|x) / d theta)^2

    computed exactly over the classes with per-example gradients (``torch.func``), in eval mode.
    """
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    dev = next(iter(params.values())).device

    def log_prob(p, x, y):
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return torch.log_softmax(logits, -1)[0].gather(0, y.view(1))[0]  # gather: indexing cannot be vmapped

    per_example = vmap(grad(log_prob), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(dev)
        with torch.no_grad():
            probs = model(x).softmax(-1)  # (B, K)
        for y in range(probs.shape[1]):  # the expectation over labels, one class at a time (K is small)
            with warnings.catch_warnings():  # torch warns that vmap runs attention unbatched: slower, still exact
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                grads = per_example(params, x, torch.full((len(x),), y, device=dev))
            for k, g in grads.items():
                fisher[k] += (_per_row(probs[:, y], g) * g.pow(2)).sum(0)
    return {k: v / len(inputs) for k, v in fisher.items()}


def _linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``nn.Linear`` layers and GPT-2's ``Conv1D`` (which stores its weight transposed: ``in x out``)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) or is_conv1d(m)}


@torch.no_grad()
def gram_matrices(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``G = X^T X`` of the inputs ``X`` (rows: every position of every example) of each linear layer."""
    layers = _linear_layers(model)
    grams: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + x.T @ x
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    dev = next(model.parameters()).device
    try:
        model.eval()
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
    return grams


def regmean(models: Sequence[torch.nn.Module], inputs: Sequence[torch.Tensor], alpha: float = 0.9
            ) -> dict[str, torch.Tensor]:
    """RegMean: for every linear layer ``y = x W^T``, the ``W`` that minimises ``sum_i ||X_i W^T - X_i W_i^T||^2``,

        W* = (sum_i W_i G_i) (sum_i G_i)^-1,    G_i = X_i^T X_i  (off-diagonals scaled by ``alpha``),

    where ``X_i`` are the layer's inputs in model ``i`` on model ``i``'s own (unlabeled) ``inputs[i]``.
    ``alpha < 1`` also keeps the system solvable where ``X^T X`` is singular (inputs that come out of a
    LayerNorm sum to zero over features, for instance).
    Every other parameter (biases, norms, embeddings) is averaged.
    """
    if len(models) != len(inputs):
        raise ValueError(f"got {len(models)} models but {len(inputs)} input sets (one per model)")
    alpha = _check_number(alpha, "alpha")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    out = weighted_average([m.state_dict() for m in models])
    grams = [gram_matrices(m, x) for m, x in zip(models, inputs)]
    layers = [_linear_layers(m) for m in models]
    for name, layer in layers[0].items():
        transposed = is_conv1d(layer)  # Conv1D computes x W with W of shape (in, out)
        weighted, total = 0, 0
        for model_layers, g in zip(layers, grams):
            g = g[name]
            g = alpha * g + (1 - alpha) * torch.diag(torch.diag(g))  # shrink off-diagonals towards 0
            w = model_layers[name].weight.detach().double()
            weighted = weighted + (g @ w if transposed else w @ g)
            total = total + g
        merged = torch.linalg.solve(total, weighted) if transposed else torch.linalg.solve(total, weighted.T).T
        out[f"{name}.weight"] = merged.to(layer.weight.dtype)
    return out


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(logits))`` averaged over the rows: the test-time objective of AdaMerging and WEMoE."""
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def adamerging(model: torch.nn.Module, pretrained: StateDict, finetuned: Sequence[StateDict],
               unlabeled: Sequence[torch.Tensor], steps: int = 500, lr: float = 1e-3, init: float = 0.3,
               batch_size: int = 16, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Layer-wise AdaMerging: ``theta_l = theta_0,l + sum_t lam_{t,l} tau_{t,l}``, one coefficient per task and
    per parameter tensor in [0, 1], learned by minimising the mean prediction entropy on unlabeled inputs of every task:

        min_lam  sum_t E_{x in task t} H( softmax f(x; theta(lam)) )

    ``model`` is any instance of the architecture (its weights are not used). Returns the merged state dict
    and the coefficients ``lam`` of shape ``(tasks, parameter tensors)``; buffers (BatchNorm statistics) are
    merged by task arithmetic with ``init``.
    """
    from torch.func import functional_call

    check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")])
    if len(unlabeled) != len(finetuned):
        raise ValueError(f"got {len(unlabeled)} unlabeled input sets for {len(finetuned)} tasks (one per task)")
    init = _check_number(init, "init")
    stacked = {key: tau for key, _, tau in _task_vectors_by_key(pretrained, finetuned)}  # (T, ...) per key
    learned = dict(model.named_parameters())
    keys = [k for k in stacked if k in learned]
    # buffers (BatchNorm statistics) are not learned: task arithmetic with lam = init
    fixed = {k: v + init * stacked[k].sum(0) if k in stacked and k not in learned else v.clone()
             for k, v in pretrained.items()}
    dev = stacked[keys[0]].device
    lam = torch.full((len(finetuned), len(keys)), init, device=dev, requires_grad=True)
    optimizer = torch.optim.Adam([lam], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.eval()

    def merged(coeffs):
        return {k: pretrained[k] + (_per_row(coeffs[:, i], stacked[k]) * stacked[k]).sum(0) for i, k in enumerate(keys)}

    for _ in range(steps):
        params = merged(lam.clamp(0.0, 1.0))  # the paper's code clamps every coefficient to [0, 1]
        loss = 0
        for x in unlabeled:
            idx = torch.randint(len(x), (batch_size,), generator=generator)
            loss = loss + prediction_entropy(functional_call(model, {**fixed, **params}, (x[idx].to(dev),)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return {**fixed, **merged(lam.clamp(0.0, 1.0))}, lam.detach().clamp(0.0, 1.0)


METHODS = {"average": "weighted_average", "task_arithmetic": "task_arithmetic", "ties": "ties_merge",
           "dare": "dare_merge"}


def merge(pretrained: StateDict | None, finetuned: Sequence[StateDict], method: str = "task_arithmetic", **hparams
          ) -> dict[str, torch.Tensor]:
    """One entry point: ``merge(theta_0, [theta_1, ...], method="ties", density=0.2)``.

    ``method`` is one of ``"average"`` (ignores ``pretrained``), ``"task_arithmetic"``, ``"ties"``, ``"dare"``.
    """
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(method), METHODS, n=1)
        raise ValueError(f"unknown merging method {method!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" Known: {sorted(METHODS)}")
    fn = globals()[METHODS[method]]
    if method == "average":
        return fn(finetuned, **hparams)
    if pretrained is None:
        raise ValueError(f"method {method!r} needs the pretrained state dict (task vectors are relative to it)")
    return fn(pretrained, finetuned, **hparams)
