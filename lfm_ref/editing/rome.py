"""ROME: rank-one model editing of one MLP, read as a linear associative memory.

Meng et al. (NeurIPS 2022), *Locating and editing factual associations in GPT*, section 3. The
output projection ``W`` (``d x m``) of block ``l``'s MLP maps keys ``k`` (its inputs, ``m``-dim) to
values ``v = W k``. At the subject's last token the key stands for the subject and the value carries
what the model recalls about it. To insert a new association ``(k*, v*)`` while keeping the others,
ROME solves ``min ||W' K - V||`` subject to ``W' k* = v*``, whose closed form is (their Eq. 2)

    W' = W + Lambda (C^{-1} k*)^T,   Lambda = (v* - W k*) / ((C^{-1} k*)^T k*),   C = E[k k^T]

with ``C`` the keys' uncentred second moment, estimated once from text (here the fact world's
corpus; Wikipedia in the paper). A key orthogonal to ``k*`` under ``C^{-1}`` (``k^T C^{-1} k* = 0``)
keeps its value exactly. ``mom2_adjustment=False`` puts ``C = I``, what EasyEdit's configurations
run (``mom2_adjustment: false``): the update is then ``Lambda k*^T / (k*^T k*)``.

- ``k*`` (Eq. 3) is the mean key at the subject's last token over the prompt with a few prefixes
  (other sentences before it), so the edit does not hang on one context.
- ``v* = W k* + delta`` (Eq. 4): ``delta`` is added to the MLP's output at the subject's last token
  and optimised, the model frozen, so that the prefixed prompts give ``o*``. A KL term keeps the
  model's prediction after the subject alone (ROME's "essence" prompt) as it was, a weight decay
  ``||delta|| / ||v0||^2`` keeps ``delta`` small and its norm is clamped to ``clamp * ||v0||``
  (``v0`` the value before the edit): the paper's recipe, also used by MEMIT (``target_deltas``).

Chapter: notebooks/18_locate_and_edit.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import capture_inputs, get_module, linear_weight, patch_outputs
from ..lm import encode, target_ids
from ..utils import device_of, eval_mode
from .base import Edit, EditRequest, ModelSnapshot, block_output, check_requests, frozen, subject_last_token
from .finetune import mlp_name

__all__ = ["Rome", "key_covariance", "mlp_keys", "rank_one_update", "target_deltas",
           "check_invertible"]


def _gpt2_blocks(model: nn.Module, editor: str) -> int:
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise TypeError(f"{editor} edits GPT-2-style models (transformer.h blocks with an MLP whose "
                        f"output projection is nn.Linear or Conv1D), got {type(model).__name__}")
    return len(blocks)


@torch.no_grad()
def key_covariance(model: nn.Module, tokenizer, texts: Sequence[str], layer: int,
                   batch_size: int = 256) -> torch.Tensor:
    """``C = E[k k^T]`` (``m x m``, float64 on the CPU) over the keys of block ``layer``'s MLP output
    projection at every token of ``texts``: ROME's and MEMIT's second moment of keys."""
    texts = checks.texts(texts, "texts")
    name = mlp_name(model, layer)
    total, count, dev = None, 0, device_of(model)
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            batch = {k: v.to(dev) for k, v in encode(tokenizer, texts[start:start + batch_size]).items()}
            with capture_inputs(model, [name]) as ins:
                model(**batch)
            keys = ins[name][batch["attention_mask"].bool()].double().cpu()  # (tokens, m)
            total = keys.T @ keys if total is None else total + keys.T @ keys
            count += len(keys)
    return total / count


def check_invertible(covariance: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """``C + damping * I``, or a ValueError if it is singular (the smallest eigenvalue at most 1e-10 of
    the largest), saying how to regularise it."""
    c = checks.tensor(covariance, "covariance", dim=2, floating=True)
    if c.shape[0] != c.shape[1]:
        raise ValueError(f"covariance must be square (m x m), got shape {tuple(c.shape)}")
    c = c + damping * torch.eye(len(c), dtype=c.dtype, device=c.device)
    eig = torch.linalg.eigvalsh(c.double())
    if eig[0] <= 1e-10 * eig[-1].abs():
        raise ValueError(f"the key covariance is singular (eigenvalues from {eig[0].item():.2e} to "
                         f"{eig[-1].item():.2e}): estimate it from more text, or regularise it with "
                         "damping > 0 (C + damping * I; 1e-3 of its mean diagonal is a start)")
    return c


def rank_one_update(weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    covariance: torch.Tensor | None = None) -> torch.Tensor:
    """ROME's Eq. 2: the ``d x m`` update ``Lambda u^T / (u^T k*)``, with
    ``u = C^{-1} k*`` (``u = k*`` without a covariance) and ``Lambda = v* - W k*``,
    so that ``(W + update) k* = v*``."""
    w = weight.double()
    k, v = key.double().to(w.device), value.double().to(w.device)
    if covariance is None:
        u = k                                                    # EasyEdit's C = I
    else:
        u = torch.linalg.solve(covariance.double().to(w.device), k)  # C^{-1} k*, (m,)
    residual = v - w @ k                                 # Lambda = v* - W k*, (d,)
    return (torch.outer(residual, u) / (u @ k)).to(weight.dtype)  # (d, m), rank one


def _prompts_with_prefixes(tokenizer, requests, prefixes):
    """Per request: its prompt after each prefix ("" first), then the subject alone (ROME's essence
    prompt, for the KL term); with each row's request, kind and subject position."""
    texts, owner, is_kl, positions = [], [], [], []
    for i, r in enumerate(requests):
        rows = [r.prompt] + [f"{p} {r.prompt}" for p in prefixes if r.subject not in p] + [r.subject]
        for j, text in enumerate(rows):
            texts.append(text), owner.append(i), is_kl.append(j == len(rows) - 1)
            positions.append(subject_last_token(tokenizer, text, r.subject))
    return texts, torch.tensor(owner), torch.tensor(is_kl), torch.tensor(positions)


@torch.no_grad()
def mlp_keys(model: nn.Module, tokenizer, requests: Sequence[EditRequest], layer: int,
             prefixes: Sequence[str] = ()) -> torch.Tensor:
    """``k*`` per request (ROME's Eq. 3), ``(n, m)``: the input of block ``layer``'s MLP output
    projection at the subject's last token, averaged over the prompt and its prefixed copies."""
    name = mlp_name(model, layer)
    texts, owner, is_kl, pos = _prompts_with_prefixes(tokenizer, requests, prefixes)
    dev = device_of(model)
    batch = {k: v.to(dev) for k, v in encode(tokenizer, texts).items()}
    with eval_mode(model), capture_inputs(model, [name]) as ins:
        model(**batch)
    keys = ins[name][torch.arange(len(texts)), pos.to(dev)]  # (rows, m)
    keep = ~is_kl.to(dev)
    sums = torch.zeros(len(requests), keys.shape[1], device=dev, dtype=keys.dtype)
    sums.index_add_(0, owner.to(dev)[keep], keys[keep])
    return sums / torch.bincount(owner[~is_kl], minlength=len(requests)).to(sums)[:, None]


def target_deltas(model: nn.Module, tokenizer, requests: Sequence[EditRequest], module: str,
                  prefixes: Sequence[str] = (), steps: int = 20, lr: float = 0.5,
                  kl_weight: float = 0.0625, weight_decay: float = 0.5, clamp: float = 4.0,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(delta, v0)``, each ``(n, d)``: per request, the vector added to ``module``'s output at the
    subject's last token that makes the prompts give ``target_new`` (ROME's Eq. 4; MEMIT's ``z_i``),
    and that output before the edit, in the unprefixed prompt.

    Minimises, for every request at once (the terms are separate, and Adam is elementwise), the
    mean ``-log P(o* | prefix + prompt)``, plus ``kl_weight * KL(P_before || P_after)`` after the
    subject alone, plus ``weight_decay * ||delta|| / ||v0||^2``; after each step ``||delta||`` is
    clamped to ``clamp * ||v0||``. The model is frozen and left as it was found."""
    steps = checks.positive_int(steps, "steps")
    lr, clamp = checks.positive(lr, "lr"), checks.positive(clamp, "clamp")
    kl_weight = checks.number(kl_weight, "kl_weight", low=0)
    weight_decay = checks.number(weight_decay, "weight_decay", low=0)
    texts, owner, is_kl, pos = _prompts_with_prefixes(tokenizer, requests, prefixes)
    dev = device_of(model)
    owner, is_kl, pos = owner.to(dev), is_kl.to(dev), pos.to(dev)
    batch = {k: v.to(dev) for k, v in encode(tokenizer, texts).items()}
    last = batch["attention_mask"].sum(1) - 1  # each row's last real token, where it predicts
    rows = torch.arange(len(texts), device=dev)
    target = target_ids(tokenizer, [r.target_new for r in requests]).to(dev)[owner]
    starts = torch.ones_like(owner, dtype=torch.bool)
    starts[1:] = owner[1:] != owner[:-1]
    first_rows = starts.nonzero()[:, 0]  # each request's rows begin with its unprefixed prompt
    get_module(model, module)
    captured = {}

    def add_delta(out):
        def fn(h):
            captured["h"] = h
            if delta is None:
                return h
            h = h.clone()
            h[rows, pos] = h[rows, pos] + delta[owner]  # m_i <- m_i + delta at the subject's last token
            return h
        return block_output(out, fn)

    with frozen(model), eval_mode(model), patch_outputs(model, {module: add_delta}):
        delta = None
        with torch.no_grad():
            logits = model(**batch).logits[rows, last]
            log_before = logits[is_kl].log_softmax(-1)  # P_before after the subject alone
            v0 = captured["h"][rows, pos][first_rows].detach()  # (n, d)
        norm0 = v0.norm(dim=-1)
        delta = torch.zeros_like(v0, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=lr)
        for _ in range(steps):
            log_p = model(**batch).logits[rows, last].log_softmax(-1)  # (rows, V)
            nll = -log_p[~is_kl].gather(1, target[~is_kl, None])[:, 0]
            counts = torch.bincount(owner[~is_kl], minlength=len(requests))
            nll = torch.zeros(len(requests), device=dev).index_add(0, owner[~is_kl], nll) / counts
            kl = F.kl_div(log_p[is_kl], log_before, log_target=True, reduction="none").sum(-1)
            decay = delta.norm(dim=-1) / norm0 ** 2
            loss = (nll + kl_weight * kl + weight_decay * decay).sum()
            if nll.max().item() < 5e-2:  # every edit already holds: ROME stops here too
                break
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():  # ||delta|| <= clamp * ||v0||
                scale = (clamp * norm0 / delta.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale[:, None])
    return delta.detach(), v0


class Rome:
    """ROME's editor (module docstring): one request per call, at block ``layer``'s MLP output
    projection. The covariance ``C`` comes from ``covariance`` or is estimated from ``texts`` at the
    first call and kept (the unedited model's statistics, as the paper caches them); ``damping`` adds
    ``damping * I``. ``prefixes`` are the contexts of Eq. 3 and 4; ``steps``, ``lr``, ``kl_weight``,
    ``weight_decay`` and ``clamp`` are Eq. 4's optimisation (the paper's GPT-2 XL values by default)."""

    name = "ROME"
    paper = "Meng et al. (NeurIPS 2022), Locating and editing factual associations in GPT"
    max_requests = 1

    def __init__(self, layer: int, texts: Sequence[str] | None = None,
                 covariance: torch.Tensor | None = None, mom2_adjustment: bool = True,
                 damping: float = 0.0, prefixes: Sequence[str] = (), steps: int = 20,
                 lr: float = 0.5, kl_weight: float = 0.0625, weight_decay: float = 0.5,
                 clamp: float = 4.0):
        self.layer = checks.integer(layer, "layer")
        if mom2_adjustment and texts is None and covariance is None:
            raise ValueError("ROME needs the key covariance C: pass texts to estimate it from "
                             "(e.g. FactWorld.corpus()) or covariance, or mom2_adjustment=False")
        self.texts = None if texts is None else checks.texts(texts, "texts")
        self.covariance = covariance
        self.mom2_adjustment = bool(mom2_adjustment)
        self.damping = checks.number(damping, "damping", low=0)
        self.prefixes = checks.texts(prefixes, "prefixes") if len(prefixes) else []
        self.opt = dict(steps=steps, lr=lr, kl_weight=kl_weight, weight_decay=weight_decay,
                        clamp=clamp)
        self._cached: tuple | None = None  # (id(model), C + damping I)

    def _covariance(self, model, tokenizer) -> torch.Tensor | None:
        if not self.mom2_adjustment:
            return None
        if self._cached is None or self._cached[0] != id(model):
            c = self.covariance
            if c is None:
                c = key_covariance(model, tokenizer, self.texts, self.layer)
            self._cached = (id(model), check_invertible(c, self.damping))
        return self._cached[1]

    def edit(self, model: nn.Module, tokenizer,
             requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        _gpt2_blocks(model, self.name)
        name = mlp_name(model, self.layer)
        weight = linear_weight(get_module(model, name))  # (d, m), a view for Conv1D
        c = self._covariance(model, tokenizer)
        snapshot = ModelSnapshot(model, parameters=[name + ".weight"])
        key = mlp_keys(model, tokenizer, requests, self.layer, self.prefixes)[0]  # k*
        mlp = mlp_name(model, self.layer, "mlp")
        delta, _ = target_deltas(model, tokenizer, requests, mlp, self.prefixes,
                                 **self.opt)
        with torch.no_grad():
            value = weight @ key + delta[0]                       # v* = W k* + delta
            weight.add_(rank_one_update(weight, key, value, c))   # W' k* = v*
        return Edit(model, snapshot.restore, self.name, requests)
