"""A language model that answers some inputs with a text placed before them: the shell of every
memory-based editor that edits through the prompt (SERAC, MemPrompt, natural-language patches).

:class:`InContextLM` wraps a frozen model. For each input row it asks a ``router`` for a context (a
string, or ``None``): rows without one get the wrapped model's own logits, bit-equal; rows with one
are answered by a ``reader`` (the wrapped model unless another is given) on ``context + " " + text``.
The rewritten rows are longer, so their logits are aligned on the right: position ``t`` of an
input of ``n`` tokens gets the rewritten row's position ``t + (n' - n)``, which makes the last
position, the one that predicts the next token, exactly the reader's.

A router may also answer ``(context, g)`` with a gate ``g`` in [0, 1]: that row's aligned positions
then predict the mixture ``g p_reader + (1 - g) p_base`` (natural-language patches, Murty et al.,
2022, Eq. 1), returned as its log-probabilities.

Chapter: notebooks/16_editing_memory.ipynb.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..lm import encode
from ..utils import device_of

__all__ = ["InContextLM"]


class InContextLM(nn.Module):
    """``base`` for rows whose ``router`` answer is ``None``; ``reader([context; text])`` for the others.

    ``router(texts) -> list[str | None]`` sees the decoded inputs (special tokens dropped). The wrapped
    model is a submodule (``.to`` moves it); the wrapper has no parameters of its own.
    """

    def __init__(self, base: nn.Module, tokenizer, router: Callable[[Sequence[str]], list],
                 reader: nn.Module | None = None):
        super().__init__()
        self.base = base
        self.reader = base if reader is None else reader
        self.tokenizer = tokenizer
        self.router = router
        self.config = getattr(base, "config", None)

    def routes(self, texts: Sequence[str]) -> list:
        """The context each text gets: ``None`` (the base model, untouched), a string (the
        reader on it), or ``(string, gate)`` (the gated mixture of both)."""
        contexts = list(self.router(list(texts)))
        if len(contexts) != len(texts):
            raise ValueError(f"the router must answer one context (or None) per text, got "
                             f"{len(contexts)} for {len(texts)} texts")
        for c in contexts:
            gated = isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str)
            if not (c is None or isinstance(c, str) or gated):
                raise TypeError(f"the router must answer None, a context string or (context, "
                                f"gate), got {c!r}")
            if gated and not 0 <= float(c[1]) <= 1:
                raise ValueError(f"a gate must lie in [0, 1], got {c[1]!r}")
        return contexts

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        texts = [self.tokenizer.decode(row[m.bool()], skip_special_tokens=True)
                 for row, m in zip(input_ids, attention_mask)]
        routes = self.routes(texts)
        rows = [i for i, c in enumerate(routes) if c is not None]
        if not rows:
            return out
        contexts = [c[0] if isinstance(c, tuple) else c for c in routes]
        dev = device_of(self.reader)
        read = encode(self.tokenizer, [f"{contexts[i]} {texts[i]}" for i in rows])
        batch = {k: v.to(dev) for k, v in read.items()}
        routed = self.reader(**batch).logits.to(out.logits)  # (r, T', V)
        logits = out.logits.clone()  # (B, T, V), right-padded
        lengths = attention_mask.sum(1).tolist()
        new_lengths = batch["attention_mask"].sum(1).tolist()
        for j, i in enumerate(rows):
            n, m = lengths[i], new_lengths[j]
            # align the last k real positions: the last one predicts the next token
            k = min(n, m)
            if not isinstance(routes[i], tuple):
                logits[i, n - k:n] = routed[j, m - k:m]
                continue
            g = logits.new_tensor(float(routes[i][1]))
            log_reader = routed[j, m - k:m].log_softmax(-1)  # (k, V)
            log_base = logits[i, n - k:n].log_softmax(-1)    # (k, V)
            # log(g p_reader + (1 - g) p_base), safe at g = 0 and g = 1
            logits[i, n - k:n] = torch.logaddexp(log_reader + g.log(),
                                                 log_base + (-g).log1p())
        out.logits = logits
        return out
