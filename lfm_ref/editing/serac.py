"""SERAC: semi-parametric editing with a retrieval-augmented counterfactual model.

Mitchell et al. (ICML 2022), *Memory-based model editing at scale*. The base model is never
changed. Edits go into an explicit memory; a **scope classifier** ``g(e, x) in [0, 1]`` says whether an
input ``x`` falls under a stored edit ``e``; an input in scope of its best edit,
``i* = argmax_i g(e_i, x)`` with ``g(e_{i*}, x) > 1/2``, is answered by a **counterfactual model**
``h(e_{i*}, x)``, every other input by the base model, untouched (their Eq. 1):

    f_edited(x) = h(e_{i*}, x)   if g(e_{i*}, x) > 1/2,   else   f_base(x)

The counterfactual model here is a reader that is shown the edit before the input (the zoo's TinyGPT
reads a fact placed before a question and follows it over its memory), through
:class:`lfm_ref.editing.incontext.InContextLM`. The scope classifier is SERAC's embedding variant,
small enough to train in a second: both texts are bags of the base model's (frozen) token
embeddings, and

    g(e, x) = sigmoid(s * sum_j a_j max_t cos(u_j, v_t) / sum_j a_j + b),   a_j = softplus(w . u_j + c)

scores how well every token ``u_j`` of the edit finds a match ``v_t`` in the input, with learned
importances ``a_j`` (names count, template words should not) and a learned scale and threshold
``s, b``. It is trained with binary cross-entropy on edits *other* than those it will judge
(:func:`scope_examples`: their paraphrases in scope, their neighbours and other subjects out), as
SERAC trains its classifier on a training set of edits.

Chapter: notebooks/16_editing_memory.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..train import DictDataset, fit
from .base import Edit, EditRequest, check_requests
from .incontext import InContextLM

__all__ = ["ScopeClassifier", "Serac", "scope_examples"]


def scope_examples(requests: Sequence[EditRequest], others: Sequence[Sequence[str]] | None = None
                   ) -> list[tuple[str, str, float]]:
    """``(edit statement, input, in scope)`` triples to train a scope classifier, from training edits:
    each edit's prompt and pretraining paraphrases are in scope (never the held-out last paraphrase);
    its neighbours, the prompts of the next three edits and ``others[i]`` (hard negatives for edit
    ``i``: inputs about other subjects that resemble it, e.g. people who share a name) are out."""
    requests = checks.non_empty(requests, "requests")
    others = [[] for _ in requests] if others is None else list(others)
    if len(others) != len(requests) or any(isinstance(o, str) for o in others):
        raise ValueError(f"others must hold one list of prompts per request ({len(requests)}), got "
                         f"{len(others)} entries")
    examples = []
    for i, r in enumerate(requests):
        e = r.statement()
        examples += [(e, p, 1.0) for p in (r.prompt, *r.paraphrases[:-1])]
        examples += [(e, p, 0.0) for p, _ in r.neighbours]
        for j in range(1, min(4, len(requests))):
            examples.append((e, requests[(i + j) % len(requests)].prompt, 0.0))
        examples += [(e, p, 0.0) for p in checks.texts(others[i], f"others[{i}]")] if others[i] else []
    return examples


class ScopeClassifier(nn.Module):
    """SERAC's scope classifier ``g(e, x)`` over ``model``'s frozen token embeddings (module docstring).

    The embeddings are read from ``model.get_input_embeddings()`` and held outside the module tree, so
    the classifier's ``parameters()`` are its own three: the importance map ``(w, c)``, ``s`` and ``b``.
    """

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        weight = checks.module(model).get_input_embeddings().weight.detach()
        self._embeddings = (weight,)  # a tuple: not a parameter or buffer of the classifier
        self.tokenizer = tokenizer
        self.importance = nn.Linear(weight.shape[1], 1, device=weight.device)  # a_j = softplus(w.u_j + c)
        self.scale = nn.Parameter(torch.tensor(10.0, device=weight.device))
        self.bias = nn.Parameter(torch.tensor(-5.0, device=weight.device))

    def token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token ids ``(N, T)`` (no special tokens) and their mask."""
        texts = checks.texts(texts)
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row, dtype=torch.long), True
        dev = self.scale.device
        return ids.to(dev), mask.to(dev)

    def _logits(self, e_ids, e_mask, x_ids, x_mask) -> torch.Tensor:
        """Broadcasting core: edits ``(..., Te)``, inputs ``(..., Tq)`` -> ``(...)``."""
        table = self._embeddings[0]
        u = F.normalize(table[e_ids], dim=-1)  # (..., Te, d)
        v = F.normalize(table[x_ids], dim=-1)  # (..., Tq, d)
        # cos(u_j, v_t), (..., Te, Tq)
        cos = (u.unsqueeze(-2) * v.unsqueeze(-3)).sum(-1)
        # max_t cos(u_j, v_t) over the input's real tokens, (..., Te)
        best = cos.masked_fill(~x_mask.unsqueeze(-2), -1.0).max(-1).values
        # a_j = softplus(w . u_j), zero on padding, (..., Te)
        a = F.softplus(self.importance(table[e_ids])).squeeze(-1) * e_mask
        # sum_j a_j max_t cos / sum_j a_j
        score = (a * best).sum(-1) / a.sum(-1).clamp_min(1e-6)
        return self.scale * score + self.bias

    def logits(self, edits: Sequence[str], inputs: Sequence[str]) -> torch.Tensor:
        """``(len(inputs), len(edits))`` logits of ``g``: every input against every edit."""
        e_ids, e_mask = self.token_ids(edits)
        x_ids, x_mask = self.token_ids(inputs)
        return self._logits(e_ids[None], e_mask[None], x_ids[:, None], x_mask[:, None])  # (Q, M)

    def pair_logits(self, edits: Sequence[str], inputs: Sequence[str]) -> torch.Tensor:
        """``(N,)`` logits of ``g(edits[i], inputs[i])``: pairs, elementwise."""
        if len(edits) != len(inputs):
            raise ValueError(f"got {len(edits)} edits but {len(inputs)} inputs")
        return self._logits(*self.token_ids(edits), *self.token_ids(inputs))

    def fit(self, examples: Sequence[tuple[str, str, float]], steps: int = 150, lr: float = 3e-2,
            batch_size: int = 512, seed: int = 0) -> list[float]:
        """Binary cross-entropy on ``(edit, input, in scope)`` triples (:func:`scope_examples`), through
        ``lfm_ref.fit``; returns the losses."""
        examples = checks.non_empty(examples, "examples")
        labels = torch.tensor([float(y) for _, _, y in examples])
        if not (labels.min() == 0 and labels.max() == 1):
            raise ValueError("examples must hold both in-scope (1) and out-of-scope (0) pairs")
        e_ids, e_mask = self.token_ids([e for e, _, _ in examples])
        x_ids, x_mask = self.token_ids([x for _, x, _ in examples])
        data = DictDataset({"e_ids": e_ids, "e_mask": e_mask, "x_ids": x_ids, "x_mask": x_mask,
                            "label": labels.to(e_ids.device)})

        def loss_fn(model, b):
            z = model._logits(b["e_ids"], b["e_mask"], b["x_ids"], b["x_mask"])
            return F.binary_cross_entropy_with_logits(z, b["label"])

        return fit(self, data, loss_fn=loss_fn, steps=steps, batch_size=batch_size, lr=lr,
                   schedule="constant", device=self.scale.device, seed=seed, progress=False)


class _EditMemory:
    """SERAC's router: the stored edits and the scope classifier that picks one (or none) per input."""

    def __init__(self, editor: Serac):
        self.editor = editor
        self.statements: list[str] = []

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        if not self.statements:
            return [None] * len(texts)
        z = self.editor.scope.logits(self.statements, texts)  # (Q, M)
        best, i = z.max(1)  # i* = argmax_i g(e_i, x)
        return [self.statements[j] if b > 0 else None for b, j in zip(best.tolist(), i.tolist())]


class Serac:
    """SERAC's editor (module docstring): ``scope`` a trained :class:`ScopeClassifier`,
    ``counterfactual`` the model that answers in-scope inputs given the edit (default: the edited
    model itself, reading the edit before the input). Any number of requests per call; a model that
    this editor already wraps gets the new edits added to its memory."""

    name = "SERAC"
    paper = "Mitchell et al. (ICML 2022), Memory-based model editing at scale"
    max_requests = None

    def __init__(self, scope: ScopeClassifier, counterfactual: nn.Module | None = None):
        if not isinstance(scope, ScopeClassifier):
            raise TypeError(f"scope must be a ScopeClassifier (trained with .fit), got {type(scope).__name__}")
        self.scope = scope
        self.counterfactual = None if counterfactual is None else checks.module(counterfactual, "counterfactual")

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        checks.module(model)
        ours = (isinstance(model, InContextLM) and isinstance(model.router, _EditMemory)
                and model.router.editor is self)
        if ours:
            wrapper, memory = model, model.router
        else:
            memory = _EditMemory(self)
            wrapper = InContextLM(model, tokenizer, memory, reader=self.counterfactual)
        n_before = len(memory.statements)
        memory.statements += [r.statement() for r in requests]

        def undo() -> nn.Module:
            del memory.statements[n_before:]
            return wrapper if ours else wrapper.base  # the model this edit was given

        return Edit(wrapper, undo, self.name, requests)
