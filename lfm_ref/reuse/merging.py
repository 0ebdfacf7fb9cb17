"""Merging models in weight space from their weights alone: one state dict out of several.

Chapter: notebooks/11_merging.ipynb (averaging across runs: notebooks/11b_averaging_runs.ipynb).

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
  and rescale the rest by ``1 / (1 - p)``; :func:`dare_merge` combines it with task arithmetic or TIES.
- :func:`fisher_merge`: Fisher-weighted averaging (Matena & Raffel, 2022, NeurIPS; arXiv:2111.09832),
  given the Fishers (computing them needs the models and inputs: :mod:`.merging_with_data`).

Each method is a **per-tensor kernel**, a function of one key's tensors; :func:`merge_by_key` is the
one loop over the keys that every merge goes through (as mergekit's ``merge_group`` is). Integer
buffers (BatchNorm's ``num_batches_tracked``) are not weights: they are copied from the first state
dict (``theta_0`` for the task-vector methods) unchanged. :func:`lfm_ref.reuse.merge` calls every
merge, with or without data, the same way.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .. import checks
from ..state_dicts import StateDict, check_state_dicts, is_weight, task_vector

__all__ = ["add_task_vectors", "dare", "dare_merge", "fisher_merge", "kept_entries", "merge_by_key", "task_arithmetic",
           "task_vector", "ties_disjoint_mean", "ties_merge", "trim", "weighted_average"]

Kernel = Callable[[str, list], torch.Tensor]
CHUNK = 2**17  # entries per slice of a tensor in the TIES and DARE kernels: their temporaries stay in cache


# ----- the one loop over keys --------------------------------------------------------------------
def merge_by_key(state_dicts: Sequence[StateDict], kernel: Kernel) -> dict[str, torch.Tensor]:
    """``{key: kernel(key, [sd[key] for sd in state_dicts])}`` for every weight; integer buffers are
    copied from ``state_dicts[0]``. Every merge of this module is a kernel passed to this loop."""
    state_dicts = check_state_dicts(state_dicts)
    return {key: kernel(key, [sd[key] for sd in state_dicts]) if is_weight(value) else value.clone()
            for key, value in state_dicts[0].items()}


def _with_pretrained(pretrained: StateDict, finetuned: Sequence[StateDict]) -> list[StateDict]:
    """``[theta_0, theta_1, ..., theta_T]``, checked: the input of every task-vector kernel."""
    if not isinstance(pretrained, Mapping):
        raise TypeError(f"pretrained must be a state dict (model.state_dict()), got "
                        f"{type(pretrained).__name__}")
    return check_state_dicts([pretrained, *check_state_dicts(finetuned, "finetuned")],
                             "[pretrained, *finetuned]")


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of shape ``(T,)`` reshaped to broadcast over the ``(T, ...)`` stack ``like``."""
    return values.to(like).view(-1, *[1] * (like.dim() - 1))


def _sum_rows(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``rows.sum(0)`` into ``out``, row after row: the order (and so the rounding) in which
    ``sum(0)`` adds a contiguous ``(T, ...)`` stack, without its reduction machinery."""
    if len(rows) == 1:
        return out.copy_(rows[0])
    torch.add(rows[0], rows[1], out=out)
    for row in rows[2:]:
        out.add_(row)
    return out


def _slices(n: int):
    """Consecutive slices of ``range(n)``, ``CHUNK`` entries each."""
    return (slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK))


# ----- task vectors ------------------------------------------------------------------------------
def add_task_vectors(pretrained: StateDict, vectors: Sequence[Mapping[str, torch.Tensor]],
                     lam: float = 1.0) -> dict[str, torch.Tensor]:
    """``theta_0 + lam * sum_t tau_t``; entries without a task vector are copied from ``theta_0``."""
    lam = checks.number(lam, "lam")
    vectors = checks.non_empty(vectors, "vectors")
    total = {k: torch.stack([v[k] for v in vectors]).sum(0) for k in vectors[0]}
    return {k: (v + lam * total[k]).to(v.dtype) if k in total else v.clone()
            for k, v in pretrained.items()}


# ----- averaging ---------------------------------------------------------------------------------
def weighted_average(state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None
                     ) -> dict[str, torch.Tensor]:
    """``sum_t w_t theta_t / sum_t w_t`` (uniform by default): averaging, uniform soup, SWA, LAWA,
    FedAvg."""
    state_dicts = check_state_dicts(state_dicts)
    if weights is None:
        weights = [1.0] * len(state_dicts)
    if isinstance(weights, (str, Mapping)):
        raise TypeError(f"weights must be a list of numbers, got {type(weights).__name__}")
    weights = list(weights)
    if len(weights) != len(state_dicts):
        raise ValueError(f"got {len(weights)} weights for {len(state_dicts)} state dicts")
    w = torch.tensor([checks.number(x, "each weight") for x in weights], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()

    def kernel(key, thetas):
        stacked = torch.stack(thetas)
        return (_per_row(w, stacked) * stacked).sum(0)  # sum_t w_t theta_t

    return merge_by_key(state_dicts, kernel)


# ----- task arithmetic ---------------------------------------------------------------------------
def task_arithmetic(pretrained: StateDict, finetuned: Sequence[StateDict],
                    lam: float = 0.3) -> dict[str, torch.Tensor]:
    """Task arithmetic: ``theta_0 + lam * sum_t (theta_t - theta_0)``; ``lam < 0``
    negates (forgets) tasks."""
    state_dicts = _with_pretrained(pretrained, finetuned)
    lam = checks.number(lam, "lam")

    def kernel(key, tensors):
        theta0, *thetas = tensors
        # sum_t (theta_t - theta_0) = sum_t theta_t - T theta_0: one accumulator, no
        # (T, ...) stack
        total = thetas[0].clone()
        for theta in thetas[1:]:
            total += theta
        return total.sub_(theta0, alpha=len(thetas)).mul_(lam).add_(theta0)

    return merge_by_key(state_dicts, kernel)


# ----- TIES: trim, elect sign, disjoint mean -----------------------------------------------------
ROUNDINGS = ("at_least_one", "floor", "floor_plus_one")


def kept_entries(n: int, density: float, rounding: str = "at_least_one") -> int:
    """How many of ``n`` entries TIES keeps at ``density``: the top ``density`` fraction, rounded.

    The paper keeps "the top-k% values" of each task vector. ``density * n`` is rarely an integer:

    - ``"at_least_one"`` (the default; mergekit): ``max(1, floor(density * n))``; every non-empty
      tensor keeps its largest entry, so a scalar or a tiny bias still merges;
    - ``"floor"`` (PEFT's ``magnitude_based_pruning``): ``floor(density * n)``; a tensor with fewer
      than ``1 / density`` entries keeps none and never merges;
    - ``"floor_plus_one"`` (the TIES authors' ``topk_values_mask`` and fusion-bench): everything at
      or above the ``(n - floor(density * n))``-th smallest magnitude, i.e. ``floor(density * n) + 1``.
    """
    checks.choice(rounding, "rounding", ROUNDINGS)
    keep = int(density * n)
    if rounding == "floor_plus_one":
        return min(n, keep + 1)
    return max(1, keep) if rounding == "at_least_one" and n > 0 else keep


Pairs = Sequence[tuple[torch.Tensor, torch.Tensor | None]]  # (theta_t, theta_0) flat, or (tau, None)


def _magnitudes(pairs: Pairs):
    """``|theta_t - theta_0|`` (``|tau|``) over all pairs, a slice at a time."""
    for theta, theta0 in pairs:
        for s in _slices(theta.numel()):
            yield theta[s].abs() if theta0 is None else torch.sub(theta[s], theta0[s]).abs_()


def _strided_sample(pairs: Pairs, stride: int) -> torch.Tensor:
    """Every ``stride``-th magnitude of the pairs read as one long vector."""
    pieces, offset = [], 0
    for theta, theta0 in pairs:
        first = (-offset) % stride
        piece = theta[first::stride] if theta0 is None else theta[first::stride] - theta0[first::stride]
        pieces.append(piece.abs())
        offset += theta.numel()
    return torch.cat(pieces).float()


def _count_and_gather(piece: torch.Tensor, lo: float, hi: float, masks: np.ndarray):
    """``(#{piece > hi}, a copy of the entries of piece in [lo, hi])``, using the two bool
    rows of ``masks`` as scratch; NumPy's comparisons are several times faster than torch's
    on the CPU."""
    if piece.device.type == "cpu" and piece.dtype in (torch.float32, torch.float64):
        x = piece.numpy()
        at_least, at_most = masks[0, :len(x)], masks[1, :len(x)]
        np.greater_equal(x, lo, out=at_least)
        np.less_equal(x, hi, out=at_most)
        inside = x[np.logical_and(at_least, at_most, out=at_most)]  # a copy
        return np.count_nonzero(at_least) - len(inside), torch.from_numpy(inside)
    inside = piece[(piece >= lo) & (piece <= hi)]
    return (piece >= lo).sum() - len(inside), inside


def _kth_largest(tasks: Sequence[Pairs], ks: Sequence[int]) -> torch.Tensor:
    """For each task ``t``, the ``ks[t]``-th largest magnitude ``|theta_t - theta_0|`` over the
    pairs ``tasks[t]`` (``+inf`` for ``k = 0``), exactly, without materialising the magnitudes:
    a ``(T,)`` float64 tensor. The tasks' pairs share their ``theta_0`` slices.

    ``kthvalue`` on a 100-million-entry tensor takes seconds. Instead: two order statistics of
    a strided sample bracket each answer; one pass, a slice at a time (each slice of ``theta_0``
    read once for all tasks), counts the magnitudes above the bracket and gathers those inside
    it (a small fraction); ``kthvalue`` ranks only those. A missed bracket (rare) falls back to
    ``kthvalue`` on everything, so the answer is always exact.
    """
    n = sum(theta.numel() for theta, _ in tasks[0])
    device = tasks[0][0][0].device

    def exact(pairs, k):  # kthvalue on every magnitude
        if k <= 0:
            return torch.tensor(float("inf"), device=device)
        return torch.cat(list(_magnitudes(pairs))).kthvalue(n - k + 1).values

    if n <= 2**18 or any(k <= 0 or k >= n for k in ks):
        return torch.stack([exact(pairs, k).to(torch.float64) for pairs, k in zip(tasks, ks)])
    brackets = []
    for pairs, k in zip(tasks, ks):
        sample = _strided_sample(pairs, (n // 2**15) | 1)          # m ~ 2^15 entries
        m = len(sample)
        q = (n - k) / n                                             # the answer's quantile
        centre, margin = q * m, 5 * math.sqrt(m * q * (1 - q)) + 4   # 5 std of its rank
        brackets.append((sample.kthvalue(max(0, int(centre - margin)) + 1).values.item(),
                         sample.kthvalue(min(m - 1, int(centre + margin) + 1) + 1).values.item()))
    above, inside = [0] * len(tasks), [[] for _ in tasks]
    masks, buffer = np.empty((2, CHUNK), dtype=bool), None
    for j, (first, theta0) in enumerate(tasks[0]):
        if buffer is None or buffer.dtype != first.dtype:
            buffer = torch.empty(CHUNK, dtype=first.dtype, device=device)
        for s in _slices(first.numel()):
            piece = buffer[:s.stop - s.start]
            for t, pairs in enumerate(tasks):
                theta = pairs[j][0]
                if theta0 is None:
                    torch.abs(theta[s], out=piece)
                else:
                    torch.sub(theta[s], theta0[s], out=piece).abs_()
                count, gathered = _count_and_gather(piece, *brackets[t], masks)
                above[t] += count
                inside[t].append(gathered)
    out = []
    for pairs, k, a, gathered in zip(tasks, ks, above, inside):
        a, gathered = int(a), torch.cat(gathered)
        if a < k <= a + len(gathered):                              # the k-th largest is inside
            out.append(gathered.kthvalue(len(gathered) - (k - a) + 1).values)
        else:
            out.append(exact(pairs, k))
    return torch.stack([v.to(torch.float64) for v in out])


def _check_density(density: float) -> float:
    return checks.number(density, "density (the fraction of entries kept)", low=0.0, high=1.0,
                         low_open=True)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _tensor_thresholds(theta0: torch.Tensor | None, thetas: Sequence[torch.Tensor], density: float,
                       rounding: str) -> torch.Tensor:
    """Tensor scope: for each task, the smallest magnitude TIES keeps in this tensor, ``(T,)``."""
    base = None if theta0 is None else _flat(theta0)
    return _kth_largest([[(_flat(t), base)] for t in thetas],
                        [kept_entries(t.numel(), density, rounding) for t in thetas])


def _model_thresholds(state_dicts: Sequence[StateDict], density: float, rounding: str) -> torch.Tensor:
    """Model scope: the thresholds of each task vector ranked over all its weights at once."""
    pretrained, *finetuned = state_dicts
    keys = [k for k, v in pretrained.items() if is_weight(v)]
    total = sum(pretrained[k].numel() for k in keys)
    keep = kept_entries(total, density, rounding)
    return _kth_largest([[(_flat(sd[k]), _flat(pretrained[k])) for k in keys] for sd in finetuned],
                        [keep] * len(finetuned))


def _disjoint_mean(tau: torch.Tensor) -> torch.Tensor:
    """TIES's elect and disjoint-merge steps on the ``(T, ...)`` stack of trimmed task vectors."""
    sign = torch.where(tau.sum(0) >= 0, 1.0, -1.0).to(tau)  # gamma = sgn(sum_t tau_t)
    agree = (tau != 0) & (tau.sign() == sign)
    # tau_m = sum_t tau_t [sgn tau_t = gamma] / #{t: sgn tau_t = gamma}
    return (tau * agree).sum(0) / agree.sum(0).clamp(min=1)


def ties_disjoint_mean(vectors: Sequence[Mapping[str, torch.Tensor]]
                       ) -> dict[str, torch.Tensor]:
    """TIES's elect and disjoint-merge steps on (trimmed) task vectors."""
    vectors = checks.non_empty(vectors, "vectors")
    # one (T, ...) stack per key
    return {key: _disjoint_mean(torch.stack([v[key] for v in vectors]))
            for key in vectors[0]}


def trim(vector: Mapping[str, torch.Tensor], density: float, scope: str = "model",
         rounding: str = "at_least_one") -> dict[str, torch.Tensor]:
    """Keep the ``density`` fraction of entries of one task vector with the largest magnitude, zero
    the rest (entries tied with the smallest one kept are all kept).

    ``scope="model"`` ranks all entries of the task vector together (the TIES paper and
    fusion-bench); ``scope="tensor"`` ranks within each tensor (PEFT and mergekit). ``rounding``:
    see :func:`kept_entries`.
    """
    density, scope = _check_density(density), checks.choice(scope, "scope", ("model", "tensor"))
    checks.choice(rounding, "rounding", ROUNDINGS)
    if density == 1:
        return dict(vector)
    if scope == "model":
        total = sum(v.numel() for v in vector.values())
        threshold = _kth_largest([[(_flat(v), None) for v in vector.values()]],
                                 [kept_entries(total, density, rounding)])[0]
        return {k: v.masked_fill(v.abs() < threshold.to(v), 0) for k, v in vector.items()}
    return {k: v.masked_fill(v.abs() < _tensor_thresholds(None, [v], density, rounding).to(v), 0)
            for k, v in vector.items()}


def _ties_kernel(theta0: torch.Tensor, thetas: Sequence[torch.Tensor], thresholds: torch.Tensor,
                 lam: float) -> torch.Tensor:
    """``theta_0 + lam * disjoint_mean(trim(tau))`` for one tensor, a slice at a time into one
    reused buffer, with arithmetic only (comparisons into bool tensors are several times slower).

    The same numbers as :func:`_disjoint_mean` on the trimmed stack: multiplying by the elected
    sign ``gamma`` (+-1) is exact, so ``gamma * sum_t max(gamma tau_t, 0)`` is the sum of the
    agreeing entries, and ``sign(max(gamma tau_t, 0))`` counts them.
    """
    if theta0.dtype != torch.float32:  # the general path: the same steps on the whole stack
        tau = torch.stack(thetas).sub_(theta0)
        tau = tau.masked_fill(tau.abs() < _per_row(thresholds, tau), 0)
        return theta0 + lam * _disjoint_mean(tau)
    n, flat0 = theta0.numel(), _flat(theta0)
    flats = [_flat(t) for t in thetas]
    out = torch.empty(theta0.shape, dtype=theta0.dtype, device=theta0.device)
    flat_out = out.view(-1)
    # hardshrink(x, c) keeps |x| > c: with c just below the threshold it keeps |x| >= threshold
    cuts = torch.nextafter(thresholds.to(torch.float32), torch.tensor(-math.inf)).tolist()
    buffer = torch.empty(len(thetas) + 3, min(n, CHUNK), dtype=theta0.dtype, device=theta0.device)
    for s in _slices(n):
        width = s.stop - s.start
        tau, (gamma, total, count) = buffer[:-3, :width], buffer[-3:, :width]  # (T, slice), (slice,)
        for t, (flat, cut) in enumerate(zip(flats, cuts)):
            torch.sub(flat[s], flat0[s], out=tau[t])                     # tau_t = theta_t - theta_0
            torch.hardshrink(tau[t], cut, out=tau[t])                    # trim
        gamma.fill_(1).copysign_(_sum_rows(tau, total))                  # sgn(sum_t tau_t), +-1
        agree = tau.mul_(gamma).clamp_(min=0)                            # |tau_t| if it agrees
        _sum_rows(agree, total)
        _sum_rows(agree.sign_(), count).clamp_(min=1)                    # #agreeing tasks
        mean = total.mul_(gamma).div_(count)                             # disjoint mean
        torch.add(flat0[s], mean.mul_(lam), out=flat_out[s])             # theta_0 + lam tau_m
    return out


def ties_merge(pretrained: StateDict, finetuned: Sequence[StateDict], density: float = 0.2,
               lam: float = 1.0, scope: str = "model", rounding: str = "at_least_one"
               ) -> dict[str, torch.Tensor]:
    """TIES-merging: trim each task vector to its top ``density`` entries, elect a sign per
    parameter (the sign of the summed trimmed vectors), average only the entries that agree with
    it, and add ``lam`` times the result to ``theta_0``.

    Conventions, where the implementations differ:

    - scope: the paper's code and fusion-bench rank a task vector's entries over the whole model
      (``scope="model"``); PEFT and mergekit within each tensor (``scope="tensor"``);
    - how many entries are kept: ``rounding``, see :func:`kept_entries` (the default keeps at
      least one per tensor, so a scalar or a tiny bias never drops out of the merge);
    - ties at the cut: every entry whose magnitude equals the smallest kept one is kept (the
      reference code's ``>=``); PEFT's ``topk`` and mergekit's ``argsort`` keep exactly the count,
      breaking such ties by position;
    - the disjoint mean divides by the number of agreeing tasks (all three); the reference code
      sends zero signs to the majority sign, we count a zero sum as positive.
    """
    state_dicts = _with_pretrained(pretrained, finetuned)
    density, lam = _check_density(density), checks.number(lam, "lam")
    scope = checks.choice(scope, "scope", ("model", "tensor"))
    checks.choice(rounding, "rounding", ROUNDINGS)
    if density < 1 and scope == "model":
        model_thresholds = _model_thresholds(state_dicts, density, rounding)

    def kernel(key, tensors):
        theta0, *thetas = tensors
        if density == 1:
            thresholds = torch.zeros(len(thetas), dtype=torch.float64)
        elif scope == "model":
            thresholds = model_thresholds
        else:
            thresholds = _tensor_thresholds(theta0, thetas, density, rounding)
        return _ties_kernel(theta0, thetas, thresholds, lam)

    return merge_by_key(state_dicts, kernel)


# ----- DARE: drop and rescale --------------------------------------------------------------------
def _check_drop_rate(p: float) -> float:
    return checks.number(p, "p (the drop rate)", low=0.0, high=1.0, high_open=True)


def _keep_bound(p: float) -> int:
    """``torch.bernoulli`` keeps an entry when ``u = r / 2^24 < 1 - p`` for a 24-bit integer ``r``
    drawn per entry; that is ``r < ceil((1 - p) 2^24)``."""
    return math.ceil(torch.tensor(1 - p, dtype=torch.float32).item() * 2**24)


def _keep_mask(shape, p: float, generator: torch.Generator) -> torch.Tensor:
    """``m ~ Bernoulli(1 - p)`` as a bool tensor on the CPU (one seed gives the same mask on every
    device): ``torch.randint`` draws the same ``r`` from the same stream as
    ``torch.bernoulli(full(shape, 1 - p))``, four times faster, so the masks are equal."""
    r = torch.randint(0, 2**24, tuple(shape), generator=generator, dtype=torch.int32)
    return torch.from_numpy(np.less(r.numpy(), _keep_bound(p)))


def dare(vector: Mapping[str, torch.Tensor], p: float, seed: int = 0,
         rescale: bool = True) -> dict[str, torch.Tensor]:
    """DARE: drop each entry with probability ``p`` and rescale the survivors by
    ``1 / (1 - p)``, so that the expectation of the result is the input."""
    p, seed = _check_drop_rate(p), checks.integer(seed, "seed")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in vector.items():
        dropped = v * _keep_mask(v.shape, p, generator).to(v.device)  # tau * m
        out[k] = dropped.div_(1 - p) if rescale else dropped  # tau * m / (1 - p)
    return out


def _dare_kernel(theta0: torch.Tensor, thetas: Sequence[torch.Tensor], p: float, lam: float,
                 generator: torch.Generator) -> torch.Tensor:
    """``theta_0 + lam * sum_t m_t * tau_t / (1 - p)`` for one tensor, a slice at a time."""
    n, T = theta0.numel(), len(thetas)
    keep = torch.empty(T, n, dtype=torch.bool)
    draws = torch.empty(min(n, CHUNK), dtype=torch.int32)
    for t in range(T):  # the masks in the order torch.bernoulli draws a (T, ...) tensor
        for s in _slices(n):
            r = draws[:s.stop - s.start]
            torch.randint(0, 2**24, r.shape, generator=generator, dtype=torch.int32, out=r)
            np.less(r.numpy(), _keep_bound(p), out=keep[t, s].numpy())
    on_cpu = theta0.device.type == "cpu"
    keep = keep if on_cpu else keep.to(theta0.device)
    flat0, flats = _flat(theta0), [_flat(t) for t in thetas]
    out = torch.empty(theta0.shape, dtype=theta0.dtype, device=theta0.device)
    flat_out = out.view(-1)
    tau_buffer = torch.empty(T + 1, min(n, CHUNK), dtype=theta0.dtype, device=theta0.device)
    mask_buffer = torch.empty(T, min(n, CHUNK), dtype=theta0.dtype, device=theta0.device)
    for s in _slices(n):
        tau, m = tau_buffer[:T, :s.stop - s.start], mask_buffer[:, :s.stop - s.start]
        total = tau_buffer[T, :s.stop - s.start]
        for t, flat in enumerate(flats):
            torch.sub(flat[s], flat0[s], out=tau[t])                    # tau_t = theta_t - theta_0
        if on_cpu and m.dtype in (torch.float32, torch.float64):
            np.copyto(m.numpy(), keep[:, s].numpy())                    # m_t as 0.0 / 1.0
        else:
            m.copy_(keep[:, s])
        tau.mul_(m).div_(1 - p)                                         # tau * m / (1 - p)
        total = _sum_rows(tau, total).mul_(lam)
        torch.add(flat0[s], total, out=flat_out[s])                     # theta_0 + lam sum_t
    return out


def dare_merge(pretrained: StateDict, finetuned: Sequence[StateDict], p: float = 0.9,
               lam: float = 0.3, then: str = "task_arithmetic", density: float = 1.0, seed: int = 0,
               rounding: str = "at_least_one") -> dict[str, torch.Tensor]:
    """DARE on every task vector, then task arithmetic (``then="task_arithmetic"``) or TIES
    (``"ties"``, trimming each tensor to ``density`` with ``rounding``)."""
    state_dicts = _with_pretrained(pretrained, finetuned)
    then = checks.choice(then, "then", ("task_arithmetic", "ties"))
    p, lam, density = _check_drop_rate(p), checks.number(lam, "lam"), _check_density(density)
    checks.choice(rounding, "rounding", ROUNDINGS)
    generator = torch.Generator().manual_seed(checks.integer(seed, "seed"))

    def kernel(key, tensors):
        theta0, *thetas = tensors
        if then == "task_arithmetic":
            return _dare_kernel(theta0, thetas, p, lam, generator)
        tau = torch.stack(thetas).sub_(theta0)                                  # (T, ...)
        tau = tau * _keep_mask(tau.shape, p, generator).to(tau.device) / (1 - p)
        if density < 1:
            thresholds = _tensor_thresholds(None, list(tau), density, rounding)
            tau = tau.masked_fill(tau.abs() < _per_row(thresholds, tau), 0)
        return theta0 + lam * _disjoint_mean(tau)

    return merge_by_key(state_dicts, kernel)


# ----- Fisher merging (given the Fishers) --------------------------------------------------------
def fisher_merge(state_dicts: Sequence[StateDict], fishers: Sequence[Mapping[str, torch.Tensor]],
                 eps: float = 1e-8) -> dict[str, torch.Tensor]:
    """Fisher merging: ``theta = sum_t F_t * theta_t / sum_t F_t`` per parameter, with diagonal
    Fishers ``F_t`` of exactly each parameter's shape (see
    :func:`lfm_ref.reuse.merging_with_data.diagonal_fisher`); entries without a Fisher are averaged
    uniformly."""
    state_dicts = check_state_dicts(state_dicts)
    fishers = checks.non_empty(fishers, "fishers")
    eps = checks.number(eps, "eps", low=0.0)
    if len(fishers) != len(state_dicts):
        raise ValueError(f"got {len(fishers)} Fishers for {len(state_dicts)} state dicts")
    for i, fisher in enumerate(fishers):
        if not isinstance(fisher, Mapping):
            raise TypeError(f"fishers[{i}] must be a dict {{parameter name: tensor}}, got "
                            f"{type(fisher).__name__}")
        if fisher.keys() != fishers[0].keys():
            raise ValueError(f"fishers[{i}] has different keys from fishers[0]")
        for key, f in fisher.items():
            if key not in state_dicts[0]:
                raise ValueError(f"a Fisher has the key {key!r}, which the state dicts lack")
            checks.same_shape(f, state_dicts[i][key], f"fishers[{i}][{key!r}]", f"the parameter {key!r}")
    n = len(state_dicts)

    def kernel(key, thetas):
        stacked = torch.stack(thetas)
        if key not in fishers[0]:
            return (_per_row(torch.full((n,), 1 / n, dtype=torch.float64), stacked) * stacked).sum(0)
        f = torch.stack([fi[key] for fi in fishers]) + eps
        return (f * stacked).sum(0) / f.sum(0)  # sum_t F_t theta_t / sum_t F_t

    return merge_by_key(state_dicts, kernel)
