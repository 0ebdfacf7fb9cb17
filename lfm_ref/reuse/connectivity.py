"""Mode connectivity: paths between trained models in weight space, and aligning models before merging.

- :func:`linear_path` and :func:`barrier`: loss and accuracy along ``(1 - a) theta_A + a theta_B``; the
  barrier is the largest rise above the straight line between the two ends (Frankle et al., 2020, "Linear
  Mode Connectivity and the Lottery Ticket Hypothesis", ICML; Entezari et al., 2022, ICLR).
- :class:`BezierCurve`: a quadratic Bezier curve ``(1-t)^2 theta_A + 2t(1-t) theta_C + t^2 theta_B`` whose
  control point is trained so that the whole curve has low loss (Garipov et al., 2018, "Loss Surfaces,
  Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS; arXiv:1802.10026).
- Permutation symmetry: hidden units can be reordered without changing the function.
  :func:`mlp_permutation_spec` says which axis of which tensor each permutation acts on, and
  :func:`permute_state_dict` applies permutations.
- :func:`weight_matching`: Git Re-Basin's weight matching (Ainsworth et al., 2023, ICLR; arXiv:2209.04836),
  coordinate descent over the permutations, each step a linear assignment problem.
- :func:`ot_fusion`: optimal-transport fusion (Singh & Jaggi, 2020, "Model Fusion via Optimal Transport",
  NeurIPS; arXiv:1910.05653): neurons aligned by a transport plan, exact or entropic (soft), then averaged.
- :func:`zipit`: ZipIt! (Stoica et al., 2024, ICLR; arXiv:2305.03053): features matched by the correlation
  of their activations, also *within* one model, and merged pairwise.

The alignment methods act on a chain of linear layers (an MLP), the setting of all three papers' first
experiments; :func:`weight_matching` takes any permutation spec, so it also aligns other architectures.
The path itself, ``(1 - alpha) theta_A + alpha theta_B``, is :func:`lfm_ref.state_dicts.interpolate`.

Chapter: notebooks/12_mode_connectivity.ipynb
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call

from .. import checks
from ..state_dicts import StateDict, check_state_dicts, interpolate, is_weight
from ..train import evaluate
from ..utils import eval_mode

PermutationSpec = Mapping[str, tuple]  # tensor name -> the permutation acting on each axis (None: not permuted)


__all__ = ["BezierCurve", "barrier", "interpolate", "linear_chain", "linear_path", "loss_and_accuracy",
           "mlp_permutation_spec", "ot_fusion", "permute_state_dict", "random_permutations", "sinkhorn",
           "weight_matching", "zipit"]


# ----- paths and barriers --------------------------------------------------------------------------
def _cross_entropy_sum(logits, labels):
    return F.cross_entropy(logits, labels, reduction="sum")


def loss_and_accuracy(model: nn.Module, data) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` data."""
    return evaluate(model, data, metric=_cross_entropy_sum), evaluate(model, data)


def linear_path(model: nn.Module, a: StateDict, b: StateDict, data, alphas=None) -> dict[str, np.ndarray]:
    """Loss and accuracy of ``model`` loaded with ``(1 - alpha) a + alpha b`` for each ``alpha`` (11 points by default).

    ``model`` only provides the architecture; its own weights are overwritten.
    """
    alphas = np.linspace(0, 1, 11) if alphas is None else np.asarray(alphas, dtype=float)
    if alphas.ndim != 1 or len(alphas) < 2:
        raise ValueError(f"alphas must be a 1-d sequence of at least 2 points, got shape {alphas.shape}")
    rows = []
    for alpha in alphas:
        model.load_state_dict(interpolate(a, b, float(alpha)))
        rows.append(loss_and_accuracy(model, data))
    loss, acc = np.array(rows).T
    return {"alpha": alphas, "loss": loss, "accuracy": acc}


def barrier(values: Sequence[float], alphas: Sequence[float] | None = None) -> float:
    """``max_a [v(a) - ((1 - a) v(0) + a v(1))]``: the rise of ``values`` above the chord between its ends.

    Pass losses for the loss barrier, errors (``1 - accuracy``) for the error barrier. ``alphas`` are the
    path positions of ``values`` (evenly spaced from 0 to 1 by default).
    """
    v = np.asarray(values, dtype=float)
    a = np.linspace(0, 1, len(v)) if alphas is None else np.asarray(alphas, dtype=float)
    if v.ndim != 1 or len(v) < 2 or a.shape != v.shape:
        raise ValueError(f"barrier needs 1-d values and alphas of equal length >= 2, got {v.shape} and {a.shape}")
    return float(np.max(v - ((1 - a) * v[0] + a * v[-1])))


class BezierCurve(nn.Module):
    """``phi(t) = (1-t)^2 theta_A + 2 t (1-t) theta_C + t^2 theta_B`` with a trainable control point ``theta_C``.

    Garipov et al. train ``theta_C`` by minimising ``E_{t ~ U(0, 1)} L(phi(t))``: in training mode every
    forward pass draws a fresh ``t``, so ``fit(curve, data)`` is the paper's procedure. ``theta_C`` starts at
    the midpoint of the two ends (the straight line). Models with BatchNorm would need their running
    statistics recomputed at every ``t``; this class is meant for models without it.
    """

    def __init__(self, model: nn.Module, start: StateDict, end: StateDict, seed: int = 0):
        super().__init__()
        checks.module(model)
        check_state_dicts([start, end], "[start, end]")
        if start.keys() != model.state_dict().keys():
            raise ValueError("start and end must be state dicts of `model`'s architecture (their keys differ)")
        self.model = copy.deepcopy(model).requires_grad_(False)  # the architecture; its weights are never used
        self.keys = [k for k, v in start.items() if is_weight(v)]
        self.fixed = {k: v.clone() for k, v in start.items() if not is_weight(v)}
        # the positions t drawn in training: a stream of their own, not the global one
        self.generator = torch.Generator().manual_seed(checks.integer(seed, "seed"))
        self.control = nn.ParameterList([nn.Parameter((start[k] + end[k]) / 2) for k in self.keys])
        for i, k in enumerate(self.keys):
            self.register_buffer(f"start_{i}", start[k].detach().clone())
            self.register_buffer(f"end_{i}", end[k].detach().clone())

    def point(self, t: float) -> dict[str, torch.Tensor]:
        """The state dict at position ``t`` of the curve (0: start, 1: end)."""
        t = checks.number(t, "t")
        out = dict(self.fixed)
        for i, (k, c) in enumerate(zip(self.keys, self.control)):
            a, b = getattr(self, f"start_{i}"), getattr(self, f"end_{i}")
            out[k] = (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b
        return out

    def forward(self, x: torch.Tensor, t: float | None = None) -> torch.Tensor:
        if t is None:
            if not self.training:
                raise ValueError("give the curve position t in eval mode (it is drawn "
                                 "at random only in training)")
            # t ~ U(0, 1), one draw per mini-batch as in the paper
            t = float(torch.rand((), generator=self.generator))
        return functional_call(self.model, self.point(t), (x,))


# ----- permutations ------------------------------------------------------------------------------
def linear_chain(model: nn.Module) -> list[str]:
    """Names of ``model``'s ``nn.Linear`` layers in order, checked to form a chain (each one's input is
    the last one's output)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(layers) < 2:
        raise ValueError(f"a chain needs at least two nn.Linear layers, {type(model).__name__} has {len(layers)}")
    for (prev, p), (name, m) in zip(layers, layers[1:]):
        if m.in_features != p.out_features:
            raise ValueError(f"{name!r} takes {m.in_features} inputs but the layer before it, {prev!r}, gives "
                             f"{p.out_features}: the linear layers of {type(model).__name__} are not a chain")
    return [name for name, _ in layers]


def mlp_permutation_spec(layers: Sequence[str]) -> dict[str, tuple]:
    """The permutation spec of a chain of linear layers: ``P_i`` reorders the outputs of ``layers[i]``
    (rows of its weight, its bias) and the inputs of ``layers[i + 1]`` (columns of its weight).
    The last layer's outputs (the classes) are never permuted."""
    if isinstance(layers, str) or len(layers) < 2:
        raise ValueError(f"layers must be a list of at least two linear layer names, got {layers!r}")
    spec = {}
    for i, name in enumerate(layers):
        out_perm = f"P_{i}" if i < len(layers) - 1 else None
        spec[f"{name}.weight"] = (out_perm, f"P_{i - 1}" if i > 0 else None)
        spec[f"{name}.bias"] = (out_perm,)
    return spec


def _permutation_sizes(spec: PermutationSpec, state_dict: StateDict) -> dict[str, int]:
    sizes = {}
    for key, axes in spec.items():
        if key not in state_dict:
            raise ValueError(f"the permutation spec names {key!r}, which the state dict does not have")
        if len(axes) != state_dict[key].dim():
            raise ValueError(f"the spec gives {len(axes)} axes for {key!r}, which has shape "
                             f"{tuple(state_dict[key].shape)}")
        for axis, perm in enumerate(axes):
            if perm is None:
                continue
            n = state_dict[key].shape[axis]
            if sizes.setdefault(perm, n) != n:
                raise ValueError(f"permutation {perm!r} acts on axes of sizes {sizes[perm]} and {n} ({key!r})")
    return sizes


def _permute(w: torch.Tensor, axes: tuple, perms: Mapping[str, torch.Tensor], skip_axis: int | None = None
             ) -> torch.Tensor:
    """One tensor with each of its ``axes`` reordered by its permutation (except ``skip_axis``)."""
    for axis, perm in enumerate(axes):
        if perm is not None and axis != skip_axis:
            w = w.index_select(axis, perms[perm].to(w.device))
    return w


def permute_state_dict(state_dict: StateDict, spec: PermutationSpec,
                       perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with every axis of the spec reordered:
    ``new[..., i, ...] = old[..., perms[P][i], ...]``."""
    sizes = _permutation_sizes(spec, state_dict)
    for name, n in sizes.items():
        if name not in perms:
            raise ValueError(f"no permutation given for {name!r}; expected one "
                             f"for each of {sorted(sizes)}")
        if sorted(perms[name].tolist()) != list(range(n)):
            raise ValueError(f"perms[{name!r}] must be a permutation of range({n})")
    permuted = {key: _permute(state_dict[key], axes, perms)
                for key, axes in spec.items()}
    return {**state_dict, **permuted}


def random_permutations(spec: PermutationSpec, state_dict: StateDict, seed: int = 0) -> dict[str, torch.Tensor]:
    """One random permutation for each permutation of the spec."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(n, generator=generator) for name, n in _permutation_sizes(spec, state_dict).items()}


def weight_matching(spec: PermutationSpec, a: StateDict, b: StateDict,
                    max_iter: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Git Re-Basin weight matching: the permutations ``pi`` of ``b`` that maximise
    ``sum_l <W_l^A, P_l W_l^B P_{l-1}^T>`` (Ainsworth et al., 2023, Algorithm 1).

    The problem is NP-hard jointly; for one ``P_l`` with the others fixed it is a linear
    assignment problem ``max_P <P, sum_w W^A_(l) (W^B_(l))^T>``, solved exactly.
    Permutations are visited in a random order until none changes. Returns ``perms`` for
    :func:`permute_state_dict` (applied to ``b``).
    """
    check_state_dicts([a, b], "[a, b]")
    max_iter = checks.positive_int(max_iter, "max_iter")
    sizes = _permutation_sizes(spec, a)
    perms = {name: torch.arange(n) for name, n in sizes.items()}
    rng = np.random.default_rng(checks.integer(seed, "seed"))
    names = sorted(sizes)
    for _ in range(max_iter):
        changed = False
        for name in rng.permutation(names):
            n = sizes[name]
            similarity = torch.zeros(n, n, dtype=torch.float64)
            for key, axes in spec.items():
                for axis, perm in enumerate(axes):
                    if perm != name:
                        continue
                    # B's tensor with every *other* axis already permuted, so that only
                    # this one is being solved
                    wb = _permute(b[key], axes, perms, skip_axis=axis)
                    wa = a[key].movedim(axis, 0).reshape(n, -1).double().cpu()
                    wb = wb.movedim(axis, 0).reshape(n, -1).double().cpu()
                    similarity += wa @ wb.T  # S_ij += <w^A_i, w^B_j>
            _, best = linear_sum_assignment(similarity.numpy(), maximize=True)
            best = torch.as_tensor(best)
            rows = torch.arange(n)
            gain = similarity[rows, best].sum() - similarity[rows, perms[name]].sum()
            if gain > 1e-12:
                perms[name], changed = best, True
        if not changed:
            break
    return perms


# ----- fusion of two MLPs ------------------------------------------------------------------------------
def _chain_weights(state_dict: StateDict, layers: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, bias)`` of every layer of the chain, in float64 on the CPU: the layers are small, and the
    assignment solvers run on the CPU."""
    for name in layers:
        if f"{name}.weight" not in state_dict or f"{name}.bias" not in state_dict:
            raise ValueError(f"the state dict has no linear layer {name!r} with a weight and a bias")
    return [tuple(state_dict[f"{n}.{p}"].detach().double().cpu() for p in ("weight", "bias")) for n in layers]


def sinkhorn(cost: torch.Tensor, reg: float, iters: int = 500) -> torch.Tensor:
    """Entropic optimal transport between two uniform distributions (in the log domain, for stability):
    ``T = argmin <T, C> - reg * H(T)`` with rows and columns summing to ``1/n`` and ``1/m``."""
    n, m = cost.shape
    log_k = -cost / reg
    log_u, log_v = torch.zeros(n, dtype=cost.dtype), torch.zeros(m, dtype=cost.dtype)
    log_a, log_b = torch.full((n,), -np.log(n), dtype=cost.dtype), torch.full((m,), -np.log(m), dtype=cost.dtype)
    for _ in range(iters):  # alternate projections onto the two marginal constraints
        log_u = log_a - torch.logsumexp(log_k + log_v[None], dim=1)
        log_v = log_b - torch.logsumexp(log_k + log_u[:, None], dim=0)
    return (log_u[:, None] + log_k + log_v[None]).exp()


def ot_fusion(a: StateDict, b: StateDict, layers: Sequence[str], reg: float | None = None, alpha: float = 0.5
              ) -> dict[str, torch.Tensor]:
    """Singh & Jaggi's weight-based OT fusion of two MLPs: layer by layer, align B's neurons to A's and average.

    For layer ``l``, B's incoming weights are first carried to A's previous neurons,
    ``W^B <- W^B (n T_{l-1})^T``; the ground cost between A's neuron ``i`` and B's neuron ``j`` is the
    squared distance of their incoming weights (bias included); ``T_l`` is the transport plan between uniform
    weights over the neurons, exact (``reg=None``, then a permutation divided by ``n``) or entropic
    (``reg > 0``, a soft alignment); B's aligned layer is ``n T_l W^B``. The fused model is
    ``(1 - alpha) W^A + alpha W^B_aligned``. Both models must have the same widths.
    """
    check_state_dicts([a, b], "[a, b]")
    alpha = checks.number(alpha, "alpha")
    if reg is not None and (isinstance(reg, bool) or not isinstance(reg, (int, float)) or reg <= 0):
        raise ValueError(f"reg must be None (exact transport) or a positive number, got {reg!r}")
    out = {k: v.clone() for k, v in a.items()}
    carry = None  # n T_{l-1}: B's previous neurons expressed in A's
    chain_a, chain_b = _chain_weights(a, layers), _chain_weights(b, layers)
    for i, (name, (wa, ba), (wb, bb)) in enumerate(zip(layers, chain_a, chain_b)):
        if carry is not None:
            wb = wb @ carry.T
        if i < len(layers) - 1:
            fa, fb = torch.cat([wa, ba[:, None]], 1), torch.cat([wb, bb[:, None]], 1)
            cost = torch.cdist(fa, fb) ** 2
            n = len(cost)
            if reg is None:
                _, col = linear_sum_assignment(cost.numpy())
                plan = torch.zeros_like(cost)
                plan[torch.arange(n), torch.as_tensor(col)] = 1.0 / n
            else:
                plan = sinkhorn(cost / cost.mean(), reg)  # cost normalised so that reg has one scale for all layers
            carry = n * plan  # row-stochastic: A's neuron i takes the plan-weighted mix of B's neurons
            wb, bb = carry @ wb, carry @ bb
        out[f"{name}.weight"] = ((1 - alpha) * wa + alpha * wb).to(a[f"{name}.weight"])
        out[f"{name}.bias"] = ((1 - alpha) * ba + alpha * bb).to(a[f"{name}.bias"])
    return out


@torch.no_grad()
def _hidden_features(model: nn.Module, layers: Sequence[str], inputs: torch.Tensor) -> list[torch.Tensor]:
    """The activations that leave every linear layer but the last one (after its nonlinearity)."""
    modules = dict(model.named_modules())
    feats = {}
    # the nonlinearity follows the linear layer; the next linear layer's *input* is the activation we want
    hooks = [modules[name].register_forward_pre_hook(lambda m, args, key=i: feats.__setitem__(key, args[0]))
             for i, name in enumerate(layers[1:])]
    try:
        with eval_mode(model):
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return [feats[i].reshape(-1, feats[i].shape[-1]) for i in range(len(layers) - 1)]


def _zip_matrices(fa: torch.Tensor, fb: torch.Tensor, same_model: bool):
    """ZipIt's greedy matching on the correlation of ``[fa, fb]``: ``h`` pairs out of ``2h`` features.

    Returns the merge matrix ``M`` (``h x 2h``, each row averages one pair) and the unmerge matrix
    ``U`` (``2h x h``, each feature reads its pair's merged feature).
    """
    h = fa.shape[1]
    corr = torch.corrcoef(torch.cat([fa, fb], 1).double().T).nan_to_num(0.0)
    corr.fill_diagonal_(-torch.inf)
    if not same_model:
        corr[:h, :h] = corr[h:, h:] = -torch.inf  # only across models: a permutation, as in Git Re-Basin
    merge, unmerge = torch.zeros(h, 2 * h, dtype=torch.float64), torch.zeros(2 * h, h, dtype=torch.float64)
    for k in range(h):  # greedy: the most correlated free pair, h times
        i, j = divmod(int(corr.argmax()), 2 * h)
        merge[k, [i, j]] = 0.5
        unmerge[[i, j], k] = 1.0
        corr[[i, j], :] = corr[:, [i, j]] = -torch.inf
    return merge, unmerge


def zipit(model_a: nn.Module, model_b: nn.Module, layers: Sequence[str],
          inputs: torch.Tensor, same_model: bool = True, separate_heads: bool = False
          ) -> StateDict | tuple[StateDict, StateDict]:
    """ZipIt! for two MLPs: merge the ``2h`` hidden features of each layer into ``h`` by
    pairing the most correlated ones on ``inputs`` (within one model too, if
    ``same_model``), averaging each pair.

    With ``[W^A; W^B]`` stacked (first layer), block-diagonal (hidden layers) or side by
    side (last layer), the merged layer is ``M_l W U_{l-1}``: ``U_{l-1}`` gives both
    models their inputs back from the merged features, ``M_l`` averages the matched
    outputs. Across models only (``same_model=False``) this is activation matching
    followed by averaging.

    ``separate_heads=True`` is ZipIt's setting of models trained on *disjoint* tasks
    (Stoica et al., 2024, sec. 5): the last layer of ``layers`` is each model's own head
    and is not merged; each head reads the merged features through its own rows of
    ``U`` (``W_head^A U^A``). Returns two state dicts, A's head and B's head on the one
    merged body (their other entries are equal).
    """
    a = checks.module(model_a, "model_a").state_dict()
    b = checks.module(model_b, "model_b").state_dict()
    check_state_dicts([a, b], "[model_a, model_b] state dicts")
    chain_a, chain_b = _chain_weights(a, layers), _chain_weights(b, layers)
    feats_a = _hidden_features(model_a, layers, inputs)
    feats_b = _hidden_features(model_b, layers, inputs)
    if not isinstance(separate_heads, bool):
        raise TypeError(f"separate_heads must be a bool, got "
                        f"{type(separate_heads).__name__}")
    out = {k: v.clone() for k, v in a.items()}
    unmerge = None
    for i, (name, (wa, ba), (wb, bb)) in enumerate(zip(layers, chain_a, chain_b)):
        last = i == len(layers) - 1
        if last and separate_heads:  # each head reads merged features via its U rows
            h = wa.shape[1]
            out_b = {k: v.clone() for k, v in out.items()}
            out[f"{name}.weight"] = (wa @ unmerge[:h]).to(a[f"{name}.weight"])
            out_b[f"{name}.weight"] = (wb @ unmerge[h:]).to(b[f"{name}.weight"])
            out_b[f"{name}.bias"] = bb.clone().to(b[f"{name}.bias"])
            return out, out_b
        if i == 0:
            w = torch.cat([wa, wb], 0)              # both models read the same input
        elif not last:
            w = torch.block_diag(wa, wb) @ unmerge  # each its own (unmerged) features
        else:
            w = torch.cat([wa, wb], 1) @ unmerge    # outputs: sum of both, halved below
        bias = torch.cat([ba, bb])
        if last:
            w, bias = w / 2, (ba + bb) / 2
        else:
            fa, fb = feats_a[i].cpu(), feats_b[i].cpu()
            merge, unmerge = _zip_matrices(fa, fb, same_model)
            w, bias = merge @ w, merge @ bias       # W_l = M_l W U_{l-1}
        out[f"{name}.weight"] = w.to(a[f"{name}.weight"])
        out[f"{name}.bias"] = bias.to(a[f"{name}.bias"])
    return out
