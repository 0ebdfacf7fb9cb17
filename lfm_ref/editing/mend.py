"""MEND: a small network, meta-trained, that turns a fine-tuning gradient into an edit.

Mitchell et al. (ICLR 2022), *Fast model editing at scale*. For a linear layer ``y = W u`` the
gradient of a loss on one sequence is a sum of rank-one terms, one per position ``t``:

    grad_W L = sum_t delta_t u_t^T,      u_t: the layer's input,  delta_t = dL / dy_t      (Eq. 1)

MEND edits with a transformed gradient: an editor network ``g`` maps each pair ``(u_t, delta_t)``
to ``(u~_t, delta~_t)``, and the layer becomes

    W~ = W - alpha * sum_t delta~_t u~_t^T                                                    (Eq. 2)

with ``alpha`` a learned step per layer (a plain parameter with its own learning rate, the paper's
``lr_lr``, equal to its initial value as in the paper's configs). ``g`` sees the concatenation
``z = [u_t; delta_t]``, each part scaled to unit RMS (and scaled back after), and is two residual
blocks with low-rank weights, ``h = z + U_1 relu(V_1 z + b_1)``, ``g(z) = h + U_2 relu(V_2 h + b_2)``.
``U_1, U_2`` start at zero, so the untrained MEND is one step of gradient descent with rate
``alpha``; the update's rank is at most the number of positions whatever ``g`` has learnt.

``g`` is meta-trained on edit requests while the model stays frozen (their Eq. 4): the edited model
must give ``target_new`` on a paraphrase of each request (``L_e``, the edit's generalisation), and
keep its next-token distribution on unrelated prompts (``L_loc``, a KL divergence):
``L = c_e L_e + L_loc``. The raw gradient factors are inputs, not differentiated through (no
second-order terms), as in the paper.

Chapter: notebooks/19_meta_editors.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import capture_inputs, get_module, linear_weight
from ..lm import encode, target_ids
from ..utils import device_of, eval_mode
from .base import Edit, EditRequest, apply_updates, check_requests, edited_forward, frozen, layer_list
from .finetune import mlp_name

__all__ = ["MendNet", "Mend", "gradient_factors"]


class MendNet(nn.Module):
    """``g: (u, delta) -> (u~, delta~)`` for one layer (module docstring), the identity at init."""

    def __init__(self, d_in: int, d_out: int, rank: int = 16):
        super().__init__()
        self.d_in, dim = d_in, d_in + d_out
        self.v1, self.v2 = nn.Linear(dim, rank), nn.Linear(dim, rank)  # V z + b
        self.u1, self.u2 = nn.Linear(rank, dim, bias=False), nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.u1.weight), nn.init.zeros_(self.u2.weight)  # g = identity at init

    def forward(self, u: torch.Tensor,
                delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        su = u.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)  # RMS of each u_t
        sd = delta.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        z = torch.cat([u / su, delta / sd], -1)           # (N, d_in + d_out)
        h = z + self.u1(F.relu(self.v1(z)))               # h = z + U1 relu(V1 z + b1)
        g = h + self.u2(F.relu(self.v2(h)))               # g = h + U2 relu(V2 h + b2)
        return g[:, :self.d_in] * su, g[:, self.d_in:] * sd


def gradient_factors(model: nn.Module, tokenizer, requests: Sequence[EditRequest],
                     names: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per named linear layer, ``(u, delta)``: its inputs and the gradients of the edit loss
    ``-log P(target_new | prompt)`` (summed over requests) with respect to its outputs, one row per
    real token, ``(N, d_in)`` and ``(N, d_out)``, detached: Eq. 1's factors. The model's
    parameters get no gradient."""
    dev = device_of(model)
    batch = {k: v.to(dev) for k, v in encode(tokenizer, [r.prompt for r in requests]).items()}
    target = target_ids(tokenizer, [r.target_new for r in requests]).to(dev)
    rows = torch.arange(len(requests), device=dev)
    last = batch["attention_mask"].sum(1) - 1
    outputs = {}

    def keep(name):
        def hook(module, args, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    handles = [get_module(model, n).register_forward_hook(keep(n)) for n in names]
    try:
        with frozen(model), eval_mode(model), capture_inputs(model, names) as ins, \
                torch.enable_grad():
            # the parameters are frozen: a graph from the embeddings carries delta_t
            embeds = model.get_input_embeddings()(batch["input_ids"]).requires_grad_(True)
            logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits[rows, last], target, reduction="sum")
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    real = batch["attention_mask"].bool()
    return {n: (ins[n][real].detach(), outputs[n].grad[real].detach()) for n in names}


class Mend:
    """MEND's editor (module docstring) for the MLP output projections of ``layers``. Call
    :meth:`meta_train` once; :meth:`edit` then edits any number of requests with one gradient
    computation and one pass of the editor networks. ``rank`` is the editor's inner width and
    ``alpha`` the initial step of every layer."""

    name = "MEND"
    paper = "Mitchell et al. (ICLR 2022), Fast model editing at scale"
    max_requests = None

    def __init__(self, layers: Sequence[int] = (2, 3), rank: int = 16, alpha: float = 1e-3,
                 seed: int = 0):
        self.layers = layer_list(layers)
        self.rank = checks.positive_int(rank, "rank")
        self.alpha0 = checks.positive(alpha, "alpha")
        self.seed = checks.integer(seed, "seed", minimum=0)
        self.nets: nn.ModuleDict | None = None
        self.alpha: nn.Parameter | None = None  # one step per layer
        self.history: list[float] = []

    def config(self) -> dict:
        """The constructor's arguments: ``Mend(**config)`` and :func:`load_editor` rebuild it."""
        return {"layers": self.layers, "rank": self.rank, "alpha": self.alpha0, "seed": self.seed}

    # ----- the editor networks ---------------------------------------------------------------
    def _build(self, model: nn.Module) -> list[str]:
        names = [mlp_name(model, layer) for layer in self.layers]
        if self.nets is None:
            with torch.random.fork_rng(devices=[]):  # the caller's global stream is left alone
                torch.manual_seed(self.seed)
                nets = {}
                for n in names:
                    d_out, d_in = linear_weight(get_module(model, n)).shape
                    nets[n.replace(".", "_")] = MendNet(d_in, d_out, self.rank)
            self.nets = nn.ModuleDict(nets).to(device_of(model))
            self.alpha = nn.Parameter(torch.full((len(names),), self.alpha0, device=device_of(model)))
        return names

    def parameters(self) -> nn.ParameterDict:
        """Everything meta-training learns, by name: the editor networks' weights and ``alpha``."""
        if self.nets is None:
            raise ValueError("MEND has no editor networks yet: call meta_train first")
        return nn.ParameterDict({**{k.replace(".", "/"): v for k, v in self.nets.named_parameters()},
                                 "alpha": self.alpha})

    def updates(self, model: nn.Module, tokenizer,
                requests: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
        """``{layer name: -alpha sum_t delta~_t u~_t^T}`` (Eq. 2), each
        ``(d_out, d_in)``, differentiable in the editor's parameters."""
        if self.nets is None:
            raise ValueError("MEND has no editor networks yet: call meta_train(model, "
                             "tokenizer, requests, locality_prompts) first")
        names = self._build(model)
        factors = gradient_factors(model, tokenizer, requests, names)
        out = {}
        for i, n in enumerate(names):
            u, delta = factors[n]                          # (N, d_in), (N, d_out)
            u_t, delta_t = self.nets[n.replace(".", "_")](u, delta)
            out[n] = -self.alpha[i] * delta_t.T @ u_t      # sum_t delta~_t u~_t^T
        return out

    # ----- meta-training -----------------------------------------------------------------------
    def meta_train(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest],
                   locality_prompts: Sequence[str], steps: int = 200, batch_size: int = 4,
                   lr: float = 1e-3, edit_weight: float = 1.0,
                   alpha_lr: float | None = None) -> list[float]:
        """Train the editor networks and steps ``alpha`` (the model frozen) for ``steps`` steps on
        batches of ``batch_size`` requests: ``L = edit_weight * L_e + L_loc`` with ``L_e`` the
        cross-entropy of ``target_new`` after a pretraining paraphrase of each request and ``L_loc``
        the KL divergence from the unedited model on ``batch_size`` of ``locality_prompts``.
        ``alpha`` learns at ``alpha_lr`` (default: its initial value, the paper's ``lr_lr = edit_lr``),
        the networks at ``lr``. Returns the losses (also kept in ``history``)."""
        requests = check_requests(requests, tokenizer, editor=self.name)
        locality_prompts = checks.texts(locality_prompts, "locality_prompts")
        steps, batch_size = checks.positive_int(steps, "steps"), checks.positive_int(batch_size, "batch_size")
        missing = [r.subject for r in requests if len(r.paraphrases) < 2]
        if missing:
            raise ValueError(f"MEND's meta-training needs requests with at least two paraphrases "
                             f"(one to train on, the held-out one never), got none for {missing[:3]}")
        self._build(model)
        dev = device_of(model)
        alpha_lr = self.alpha0 if alpha_lr is None else checks.positive(alpha_lr, "alpha_lr")
        optimiser = torch.optim.Adam([{"params": self.nets.parameters()},
                                      {"params": [self.alpha], "lr": alpha_lr}],
                                     lr=checks.positive(lr, "lr"))
        g = torch.Generator().manual_seed(self.seed)
        with frozen(model), eval_mode(model):
            for _ in range(steps):
                pick = torch.randperm(len(requests), generator=g)[:batch_size].tolist()
                batch = [requests[i] for i in pick]
                loc = [locality_prompts[i] for i in
                       torch.randint(len(locality_prompts), (batch_size,), generator=g).tolist()]
                updates = self.updates(model, tokenizer, batch)
                # L_e: a paraphrase the edit was not computed on (never the held-out one)
                which = torch.randint(len(batch[0].paraphrases) - 1, (len(batch),), generator=g)
                para = [r.paraphrases[w] for r, w in zip(batch, which.tolist())]
                enc = {k: v.to(dev) for k, v in encode(tokenizer, para).items()}
                rows = torch.arange(len(batch), device=dev)
                last = enc["attention_mask"].sum(1) - 1
                logits = edited_forward(model, updates, enc).logits[rows, last]
                target = target_ids(tokenizer, [r.target_new for r in batch]).to(dev)
                loss_e = F.cross_entropy(logits, target)
                # L_loc: KL(p_before || p_after) on unrelated prompts, every real token
                enc = {k: v.to(dev) for k, v in encode(tokenizer, loc).items()}
                real = enc["attention_mask"].bool()
                with torch.no_grad():
                    before = model(**enc).logits[real].log_softmax(-1)
                after = edited_forward(model, updates, enc).logits[real].log_softmax(-1)
                loss_loc = F.kl_div(after, before, log_target=True, reduction="batchmean")
                loss = edit_weight * loss_e + loss_loc
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                self.history.append(loss.item())
        return self.history[-steps:]

    # ----- editing -------------------------------------------------------------------------------
    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        with torch.no_grad():
            updates = self.updates(model, tokenizer, requests)     # W~ = W - alpha * ... (Eq. 2)
        return apply_updates(model, updates, self.name, requests)
