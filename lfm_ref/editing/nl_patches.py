"""Natural-language patches: "if <condition>, then <consequence>", applied through a learned gate.

Murty, Manning, Lundberg and Ribeiro (EMNLP 2022), *Fixing model bugs with natural language
patches*. A patch ``p = (c, q)`` is a condition ``c`` and a consequence ``q``, both text. A **gate**
``g(x, c) in [0, 1]`` says how likely the condition holds of the input; an **interpreter**
``I(x, q)`` answers the input as if the consequence were true; the patched model mixes the two with
the untouched model ``f`` (their Eq. 1), using the patch whose condition fits best:

    p* = argmax_p g(x, c_p),     P(y | x) = g(x, c_{p*}) I(y | x, q_{p*}) + (1 - g(x, c_{p*})) f(y | x)

so a patch changes behaviour only as far as its condition holds. For a fact edit the patch reads
"if the input is about <subject>, then <prompt> <target_new> ." (:func:`patch_for`); the condition
is written as the subject's name, the only words of it the fact world's vocabulary holds. The
interpreter is a reader shown the consequence before the input (the zoo's TinyGPT follows a stated
fact, as for SERAC), through :class:`lfm_ref.editing.incontext.InContextLM`'s gated rows. The gate
is chapter 16's :class:`lfm_ref.editing.serac.ScopeClassifier` trained on conditions instead of
statements (:func:`gate_examples`), as the paper trains its gating head on labelled
(input, condition) pairs before any patch is written.

Chapter: notebooks/17_editing_constrained.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import checks
from .base import Edit, EditRequest, check_requests
from .incontext import InContextLM
from .serac import ScopeClassifier, scope_examples

__all__ = ["LanguagePatch", "NaturalLanguagePatches", "gate_examples", "patch_for"]


@dataclass(frozen=True)
class LanguagePatch:
    """"If ``condition``, then ``consequence``": both plain text."""

    condition: str
    consequence: str

    def __post_init__(self):
        for field in ("condition", "consequence"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"a patch's {field} must be a non-empty string, got {value!r}")


def patch_for(request: EditRequest) -> LanguagePatch:
    """The patch that makes ``request``: if the input is about its subject, its statement holds."""
    return LanguagePatch(condition=request.subject, consequence=request.statement())


def gate_examples(requests: Sequence[EditRequest], others: Sequence[Sequence[str]] | None = None
                  ) -> list[tuple[str, str, float]]:
    """``(condition, input, holds)`` triples to train the gate, from training edits: the
    in-scope and out-of-scope inputs of :func:`lfm_ref.editing.serac.scope_examples`, each paired
    with its request's condition instead of its statement."""
    requests = checks.non_empty(requests, "requests")
    condition = {r.statement(): patch_for(r).condition for r in requests}
    return [(condition[e], x, y) for e, x, y in scope_examples(requests, others)]


class _PatchMemory:
    """The router: the patches so far and, per input, the best one's consequence and gate."""

    def __init__(self, editor: NaturalLanguagePatches):
        self.editor = editor
        self.patches: list[LanguagePatch] = []

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        if not self.patches:
            return [None] * len(texts)
        conditions = [p.condition for p in self.patches]
        z = self.editor.gate.logits(conditions, texts)  # (Q, P)
        best, i = z.max(1)  # p* = argmax_p g(x, c_p): the sigmoid keeps the order
        gates = torch.sigmoid(best).tolist()
        return [(self.patches[j].consequence, g) for g, j in zip(gates, i.tolist())]


class NaturalLanguagePatches:
    """Murty et al.'s patched model (module docstring): ``gate`` a trained
    :class:`ScopeClassifier` over (condition, input), ``interpreter`` the model that reads the
    consequence (default: the edited model itself). Any number of requests per call, each becoming
    :func:`patch_for` of it; a model this editor already patches gets the new patches added."""

    name = "NL patches"
    paper = "Murty et al. (EMNLP 2022), Fixing model bugs with natural language patches"
    max_requests = None

    def __init__(self, gate: ScopeClassifier, interpreter: nn.Module | None = None):
        if not isinstance(gate, ScopeClassifier):
            raise TypeError(f"gate must be a ScopeClassifier (trained with .fit on gate_examples), "
                            f"got {type(gate).__name__}")
        self.gate = gate
        self.interpreter = None if interpreter is None else checks.module(interpreter, "interpreter")

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        checks.module(model)
        ours = (isinstance(model, InContextLM) and isinstance(model.router, _PatchMemory)
                and model.router.editor is self)
        if ours:
            wrapper, memory = model, model.router
        else:
            memory = _PatchMemory(self)
            wrapper = InContextLM(model, tokenizer, memory, reader=self.interpreter)
        n_before = len(memory.patches)
        memory.patches += [patch_for(r) for r in requests]

        def undo() -> nn.Module:
            del memory.patches[n_before:]
            return wrapper if ours else wrapper.base  # the model this edit was given

        return Edit(wrapper, undo, self.name, requests)
