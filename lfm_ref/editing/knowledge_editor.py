"""KnowledgeEditor: a hypernetwork that turns an edit's gradient into a weight update.

De Cao, Aziz and Titov (EMNLP 2021), *Editing factual knowledge in language models*. A condition
``h`` is read from the edit, the prompt followed by the new object, by a bidirectional LSTM over the
frozen model's token embeddings (the last states of both directions). For each edited weight
``W`` (``d_out x d_in``) a small feed-forward head maps ``h`` to ``alpha, beta`` (``d_out``),
``gamma, delta`` (``d_in``) and ``eta`` (a scalar), and the update is the edit's gradient, gated and
shifted by rank-one masks (their Eq. 4):

    Delta W = sigmoid(eta) * (alpha^ * grad_W L(W; x, a) + beta^),
    alpha^ = sigmoid(alpha) gamma^T,   beta^ = sigmoid(beta) delta^T

The hypernetwork is trained with the model frozen (their Eq. 3): the edited model must give the new
object on the prompt and on a paraphrase, while the KL divergence of its predictions on unrelated
prompts from the original's stays below a margin ``m``, a constraint handled by a Lagrange
multiplier that rises while it is violated (``lambda <- max(0, lambda + lr * (KL - m))``).

Chapter: notebooks/19_meta_editors.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import get_module, linear_weight
from ..lm import encode, target_ids
from ..utils import device_of, eval_mode
from .base import Edit, EditRequest, apply_updates, check_requests, edited_forward, frozen, layer_list
from .finetune import mlp_name
from .mend import gradient_factors

__all__ = ["KnowledgeEditor", "UpdateHead"]


class UpdateHead(nn.Module):
    """``h -> Delta W`` for one ``d_out x d_in`` weight, given its gradient (Eq. 4)."""

    def __init__(self, cond: int, d_out: int, d_in: int, hidden: int = 128):
        super().__init__()
        self.sizes = (d_out, d_out, d_in, d_in, 1)
        self.net = nn.Sequential(nn.Linear(cond, hidden), nn.Tanh(),
                                 nn.Linear(hidden, sum(self.sizes)))

    def forward(self, h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        alpha, beta, gamma, delta, eta = self.net(h).split(self.sizes, -1)
        alpha_hat = torch.outer(torch.sigmoid(alpha), gamma)   # sigmoid(alpha) gamma^T
        beta_hat = torch.outer(torch.sigmoid(beta), delta)     # sigmoid(beta) delta^T
        return torch.sigmoid(eta) * (alpha_hat * grad + beta_hat)  # Eq. 4: d_out x d_in


class KnowledgeEditor:
    """KnowledgeEditor (module docstring) for the MLP output projections of ``layers``; one request
    per call, as the paper edits one fact at a time. Call :meth:`meta_train` first. ``margin`` is
    the KL constraint's ``m``, ``hidden`` the LSTM's and heads' width."""

    name = "KE"
    paper = "De Cao et al. (EMNLP 2021), Editing factual knowledge in language models"
    max_requests = 1

    def __init__(self, layers: Sequence[int] = (2, 3), hidden: int = 64, margin: float = 1e-3,
                 seed: int = 0):
        self.layers = layer_list(layers)
        self.hidden = checks.positive_int(hidden, "hidden")
        self.margin = checks.positive(margin, "margin")
        self.seed = checks.integer(seed, "seed", minimum=0)
        self.net: nn.ModuleDict | None = None
        self.multiplier = 0.0  # the Lagrange multiplier of the KL constraint
        self.history: list[tuple[float, float]] = []  # (edit loss, KL) per step

    def config(self) -> dict:
        """The constructor's arguments: ``KnowledgeEditor(**config)`` and :func:`load_editor`
        rebuild it."""
        return {"layers": self.layers, "hidden": self.hidden, "margin": self.margin, "seed": self.seed}

    def parameters(self) -> nn.ParameterDict:
        """Everything meta-training learns, by name: the LSTM's and the heads' weights."""
        if self.net is None:
            raise ValueError("KnowledgeEditor has no hypernetwork yet: call meta_train first")
        return nn.ParameterDict({k.replace(".", "/"): v for k, v in self.net.named_parameters()})

    def _build(self, model: nn.Module) -> list[str]:
        names = [mlp_name(model, layer) for layer in self.layers]
        if self.net is None:
            width = model.get_input_embeddings().weight.shape[1]
            with torch.random.fork_rng(devices=[]):  # the caller's global stream is left alone
                torch.manual_seed(self.seed)
                heads = {}
                for n in names:
                    d_out, d_in = linear_weight(get_module(model, n)).shape
                    heads[n.replace(".", "_")] = UpdateHead(2 * self.hidden, d_out, d_in)
                lstm = nn.LSTM(width, self.hidden, batch_first=True, bidirectional=True)
            self.net = nn.ModuleDict({"lstm": lstm, "heads": nn.ModuleDict(heads)})
            self.net.to(device_of(model))
        return names

    def condition(self, model: nn.Module, tokenizer, request: EditRequest) -> torch.Tensor:
        """``h``: the bi-LSTM's last states over the embeddings of "prompt target_new"."""
        dev = device_of(model)
        ids = torch.tensor([tokenizer(f"{request.prompt} {request.target_new}")["input_ids"]],
                           device=dev)
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)           # (1, T, width), frozen
        _, (h, _) = self.net["lstm"](embeds)                     # h: (2, 1, hidden)
        return h.reshape(-1)                                     # forward and backward, (2 hidden,)

    def updates(self, model: nn.Module, tokenizer,
                requests: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
        """``{layer name: Delta W}`` (Eq. 4) for one request (a list of one, as
        :meth:`Mend.updates` takes), differentiable in the hypernetwork's parameters."""
        (request,) = check_requests(requests, tokenizer, self.max_requests, self.name)
        return self._updates(model, tokenizer, request)

    def _updates(self, model: nn.Module, tokenizer,
                 request: EditRequest) -> dict[str, torch.Tensor]:
        """:meth:`updates` for one request already checked (meta-training checks them
        all once, before its loop)."""
        if self.net is None:
            raise ValueError("KnowledgeEditor has no hypernetwork yet: call meta_train("
                             "model, tokenizer, requests, locality_prompts) first")
        names = self._build(model)
        # grad_W L(W; x, a) = sum_t delta_t u_t^T, (d_out, d_in): MEND's Eq. 1 factors
        grads = {n: d.T @ u for n, (u, d) in
                 gradient_factors(model, tokenizer, [request], names).items()}
        h = self.condition(model, tokenizer, request)
        return {n: self.net["heads"][n.replace(".", "_")](h, grads[n]) for n in names}

    def meta_train(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest],
                   locality_prompts: Sequence[str], steps: int = 200, lr: float = 1e-3,
                   multiplier_lr: float = 1.0) -> list[tuple[float, float]]:
        """Train the hypernetwork (the model frozen) for ``steps`` steps, one request each: the
        cross-entropy of ``target_new`` after the prompt and a pretraining paraphrase, plus
        ``lambda * (KL - margin)`` on four of ``locality_prompts``; ``lambda`` rises by
        ``multiplier_lr * (KL - margin)`` and never below 0. Returns ``(edit loss, KL)`` per step."""
        requests = check_requests(requests, tokenizer, editor=self.name)
        locality_prompts = checks.texts(locality_prompts, "locality_prompts")
        steps = checks.positive_int(steps, "steps")
        self._build(model)
        dev = device_of(model)
        optimiser = torch.optim.Adam(self.net.parameters(), lr=checks.positive(lr, "lr"))
        g = torch.Generator().manual_seed(self.seed)
        with frozen(model), eval_mode(model):
            for _ in range(steps):
                r = requests[torch.randint(len(requests), (1,), generator=g).item()]
                updates = self._updates(model, tokenizer, r)
                texts = [r.prompt, *r.paraphrases[:-1]][:2]  # never the held-out template
                enc = {k: v.to(dev) for k, v in encode(tokenizer, texts).items()}
                last = enc["attention_mask"].sum(1) - 1
                rows = torch.arange(len(texts), device=dev)
                logits = edited_forward(model, updates, enc).logits[rows, last]
                target = target_ids(tokenizer, [r.target_new] * len(texts)).to(dev)
                loss_edit = F.cross_entropy(logits, target)
                pick = torch.randint(len(locality_prompts), (4,), generator=g).tolist()
                enc = {k: v.to(dev) for k, v in
                       encode(tokenizer, [locality_prompts[i] for i in pick]).items()}
                real = enc["attention_mask"].bool()
                with torch.no_grad():
                    before = model(**enc).logits[real].log_softmax(-1)
                after = edited_forward(model, updates, enc).logits[real].log_softmax(-1)
                kl = F.kl_div(after, before, log_target=True, reduction="batchmean")
                loss = loss_edit + self.multiplier * (kl - self.margin)  # Lagrangian
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                self.multiplier = max(0.0, self.multiplier
                                      + multiplier_lr * (kl.item() - self.margin))
                self.history.append((loss_edit.item(), kl.item()))
        return self.history[-steps:]

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        (request,) = check_requests(requests, tokenizer, self.max_requests, self.name)
        with torch.no_grad():
            updates = self._updates(model, tokenizer, request)      # W <- W + Delta W
        return apply_updates(model, updates, self.name, [request])
