"""MemPrompt: a memory of feedback, retrieved by similarity and put before the prompt.

Madaan et al. (EMNLP 2022), *Memory-assisted prompt editing to improve GPT-3 after deployment*. A
user's correction of the model (here: the edit, said as a sentence, ``EditRequest.statement``) is
stored in a growing memory. For a new input ``x`` the memory's entry most similar to ``x`` is
retrieved, ``i* = argmax_i s(x, m_i)``, and when ``s(x, m_{i*}) >= tau`` (or always, with no
threshold) the prompt becomes ``[m_{i*}; x]``; the frozen model reads it. Nothing is trained at edit
time and nothing in the model changes: the whole edit is in the prompt.

The similarity is a dense retriever's, ``s(x, m) = (W E(x))^T E(m)``
(:class:`lfm_ref.retrieval.DenseRetriever`; trained or not, it is not trained on edits), with the
memory encoded by the retriever's own encoder. The prompt is rewritten by
:class:`lfm_ref.editing.incontext.InContextLM`.

Chapter: notebooks/16_editing_memory.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import checks
from ..retrieval.rag import DenseRetriever, mean_hidden
from .base import Edit, EditRequest, check_requests
from .incontext import InContextLM

__all__ = ["MemPrompt"]


class _FeedbackMemory:
    """MemPrompt's lookup: stored feedback, its encodings, and the nearest one per input."""

    def __init__(self, editor: MemPrompt):
        self.editor = editor
        self.feedback: list[str] = []
        self.keys: list[torch.Tensor] = []  # E(m_i), one (d,) per entry

    def add(self, texts: Sequence[str]) -> None:
        r = self.editor.retriever
        self.feedback += list(texts)
        self.keys += list(mean_hidden(r.encoder, r.tokenizer, texts))

    def pop_to(self, n: int) -> None:
        del self.feedback[n:], self.keys[n:]

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        if not self.feedback:
            return [None] * len(texts)
        r, tau = self.editor.retriever, self.editor.threshold
        queries = r.query_map(mean_hidden(r.encoder, r.tokenizer, texts))  # W E(x), (Q, d)
        scores = queries @ torch.stack(self.keys).T  # (Q, M): s(x, m_i)
        best, i = scores.max(1)
        return [self.feedback[j] if tau is None or b >= tau else None
                for b, j in zip(best.tolist(), i.tolist())]


class MemPrompt:
    """MemPrompt's editor (module docstring): ``retriever`` scores input against memory, ``threshold``
    is ``tau`` (``None``: always prepend the nearest feedback; :meth:`fit_threshold` sets it from
    training edits). Any number of requests per call; a model
    this editor already wraps gets the new feedback added to its memory."""

    name = "MemPrompt"
    paper = "Madaan et al. (EMNLP 2022), Memory-assisted prompt editing to improve GPT-3 after deployment"
    max_requests = None

    def __init__(self, retriever: DenseRetriever, threshold: float | None = None):
        if not isinstance(retriever, DenseRetriever):
            raise TypeError(f"retriever must be a lfm_ref.retrieval.DenseRetriever, got {type(retriever).__name__}")
        self.retriever = retriever
        self.threshold = None if threshold is None else checks.number(threshold, "threshold")

    @torch.no_grad()
    def pair_scores(self, feedback: Sequence[str], inputs: Sequence[str]) -> torch.Tensor:
        """``(N,)`` similarities ``s(inputs[i], feedback[i])``: pairs, elementwise."""
        if len(feedback) != len(inputs):
            raise ValueError(f"got {len(feedback)} feedback texts but {len(inputs)} inputs")
        r = self.retriever
        keys = mean_hidden(r.encoder, r.tokenizer, feedback)  # E(m), (N, d)
        return (r.query_map(mean_hidden(r.encoder, r.tokenizer, inputs)) * keys).sum(-1)

    @torch.no_grad()
    def fit_threshold(self, examples: Sequence[tuple[str, str, float]]) -> float:
        """Set ``tau`` from ``(feedback, input, relevant)`` triples of *training* edits
        (:func:`lfm_ref.editing.serac.scope_examples`): the score, among the midpoints
        between sorted scores, that classifies the most triples right. Returns it."""
        examples = checks.non_empty(examples, "examples")
        labels = torch.tensor([float(y) for _, _, y in examples])
        if not (labels.min() == 0 and labels.max() == 1):
            raise ValueError("examples must hold both relevant (1) and irrelevant (0) "
                             "pairs")
        feedback, inputs = [m for m, _, _ in examples], [x for _, x, _ in examples]
        scores = self.pair_scores(feedback, inputs).cpu()  # s(x, m) per pair, (P,)
        ordered = scores.sort().values
        # every cut that separates two neighbouring scores, and one below them all
        candidates = torch.cat([ordered[:1] - 1, (ordered[1:] + ordered[:-1]) / 2])
        predicted = (scores[None] >= candidates[:, None]).float()  # (C, P)
        right = (predicted == labels[None]).float().sum(1)
        self.threshold = candidates[right.argmax()].item()
        return self.threshold

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        requests = check_requests(requests, tokenizer, self.max_requests, self.name)
        checks.module(model)
        ours = (isinstance(model, InContextLM) and isinstance(model.router, _FeedbackMemory)
                and model.router.editor is self)
        wrapper = model if ours else InContextLM(model, tokenizer, _FeedbackMemory(self))
        memory = wrapper.router
        n_before = len(memory.feedback)
        memory.add([r.statement() for r in requests])

        def undo() -> nn.Module:
            memory.pop_to(n_before)
            return wrapper if ours else wrapper.base

        return Edit(wrapper, undo, self.name, requests)
