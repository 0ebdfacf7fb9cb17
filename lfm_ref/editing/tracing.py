"""Causal tracing: which hidden states carry a fact from the subject to the answer.

Meng et al. (NeurIPS 2022), *Locating and editing factual associations in GPT*, section 2.1. Three
runs of the model on a prompt ``x`` about subject ``s`` whose answer is ``o``:

- the **clean** run gives ``P(o | x)`` and every hidden state ``h_t^l``;
- the **corrupted** run adds Gaussian noise ``eps ~ N(0, nu^2)`` to the token embeddings of the
  subject, so the model no longer knows who it is about: ``P_*(o)``;
- the **corrupted-with-restoration** run is the corrupted run with one state ``h_t^l`` set back to
  its clean value: ``P_{*, clean h_t^l}(o)``.

A state that restores much of ``P(o)`` is on the path that carries the fact; the indirect effect is
``IE(h_t^l) = P_{*, clean h_t^l}(o) - P_*(o)``. The state is the block's output (``kind="hidden"``),
or the output of its MLP or its attention alone; ``window`` restores that many consecutive layers
around ``l`` at once, as the paper does (10) to see a component's joint effect. ``nu`` is three times
the standard deviation of the embeddings, as in the paper, and every restoration sees the same
``samples`` noise draws (from ``seed``, a local generator) so the differences between states are not
noise. GPT-2-style models (``transformer.wte``, ``transformer.h``), Conv1D or not.

Chapter: notebooks/18_locate_and_edit.ipynb.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .. import checks
from ..hooks import capture_outputs, patch_outputs
from ..lm import target_ids
from ..utils import device_of, eval_mode
from .base import block_output, hidden_of, subject_last_token
from .finetune import mlp_name

__all__ = ["Trace", "causal_trace", "corrupted_probability", "subject_span", "TRACE_KINDS"]

TRACE_KINDS = {"hidden": "", "mlp": ".mlp", "attn": ".attn"}  # kind -> suffix of transformer.h.{l}


def subject_span(tokenizer, prompt: str, subject: str) -> tuple[int, int]:
    """``(first, last + 1)``: the token positions of ``subject`` in ``tokenizer(prompt)``."""
    last = subject_last_token(tokenizer, prompt, subject)
    before = prompt[:prompt.find(subject)].rstrip()
    first = len(tokenizer(before)["input_ids"])  # the specials (BOS) and the words before it
    return first, last + 1


def _state_name(model: nn.Module, layer: int, kind: str) -> str:
    checks.choice(kind, "kind", list(TRACE_KINDS))
    mlp_name(model, layer)  # a ValueError listing the valid layers
    return f"transformer.h.{layer}{TRACE_KINDS[kind]}"


@torch.no_grad()
def corrupted_probability(model: nn.Module, tokenizer, prompt: str, subject: str,
                          target: str, restore: Iterable[tuple[int, int]] = (),
                          kind: str = "hidden", noise: float | None = None,
                          samples: int = 10, seed: int = 0) -> float:
    """``P(target)`` after ``prompt`` with the subject's embeddings corrupted and the
    states ``restore`` (pairs ``(layer, token)``) of ``kind`` set back to their clean
    values, averaged over ``samples`` noise draws. ``noise=0`` is the clean run, and so
    is restoring every token of one block's output (all after it sees clean inputs)."""
    checks.module(model)
    samples = checks.positive_int(samples, "samples")
    dev = device_of(model)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=dev)  # (1, T)
    first, end = subject_span(tokenizer, prompt, subject)
    target_id = target_ids(tokenizer, [target]).item()
    restore = sorted(set(restore))
    n_layer, T = len(model.transformer.h), ids.shape[1]
    bad = [(x, t) for x, t in restore if not (0 <= x < n_layer and 0 <= t < T)]
    if bad:
        raise ValueError(f"restore must hold (layer, token) pairs with layer in "
                         f"[0, {n_layer}) and token in [0, {T}) for this prompt, "
                         f"got {bad[:4]}")
    wte = model.transformer.wte
    if noise is None:
        scale = 3 * wte.weight.std().item()  # nu: 3 standard deviations, as the paper
    else:
        scale = checks.number(noise, "noise", low=0)
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    eps = torch.randn(samples, end - first, wte.weight.shape[1], generator=g) * scale
    eps = eps.to(wte.weight)  # the same draws for every restoration
    names = {x: _state_name(model, x, kind) for x, _ in restore}
    with eval_mode(model):
        with capture_outputs(model, sorted(set(names.values()))) as clean:
            model(input_ids=ids)
        clean = {n: hidden_of(out) for n, out in clean.items()}  # (1, T, d) each

        def corrupt(h):  # the subject's token embeddings + eps, in every row
            h = h.expand(samples, -1, -1).clone()  # (samples, T, d)
            h[:, first:end] += eps
            return h

        def restorer(name, tokens):
            def fn(h):
                h = h.clone()
                h[:, tokens] = clean[name][:, tokens]  # h_t^l <- clean h_t^l
                return h
            return lambda out: block_output(out, fn)

        patches = {"transformer.wte": corrupt}
        for name in set(names.values()):
            tokens = [t for x, t in restore if names[x] == name]
            patches[name] = restorer(name, tokens)
        with patch_outputs(model, patches):
            logits = model(input_ids=ids).logits[:, -1]  # (samples, V)
    return logits.float().softmax(-1)[:, target_id].mean().item()


@dataclass
class Trace:
    """The result of :func:`causal_trace`: ``scores[l, t]`` is ``P(o)`` with state ``(l, t)``
    restored, beside the clean and the corrupted ``P(o)``."""

    scores: torch.Tensor  # (n_layer, T)
    clean: float
    corrupted: float
    tokens: list[str]
    subject: tuple[int, int]  # (first, last + 1)
    kind: str

    def indirect_effect(self) -> torch.Tensor:
        """``IE(h_t^l) = P_{*, clean h_t^l}(o) - P_*(o)``, ``(n_layer, T)``."""
        return self.scores - self.corrupted


def causal_trace(model: nn.Module, tokenizer, prompt: str, subject: str, target: str,
                 kind: str = "hidden", window: int = 1, noise: float | None = None,
                 samples: int = 10, seed: int = 0) -> Trace:
    """Restore each state ``(layer, token)`` of ``kind`` in turn (with ``window`` layers around the
    layer) in the corrupted run and record ``P(target)``: the heatmaps of ROME's figure 1."""
    checks.module(model)
    window = checks.positive_int(window, "window")
    n_layer = len(getattr(getattr(model, "transformer", None), "h", ()))
    if not n_layer:
        raise TypeError(f"causal tracing expects a GPT-2-style model with transformer.h blocks, got "
                        f"{type(model).__name__}")
    ids = tokenizer(prompt)["input_ids"]
    args = dict(kind=kind, noise=noise, samples=samples, seed=seed)
    clean = corrupted_probability(model, tokenizer, prompt, subject, target,
                                  **{**args, "noise": 0.0})
    corrupted = corrupted_probability(model, tokenizer, prompt, subject, target, **args)
    scores = torch.zeros(n_layer, len(ids))
    for layer in range(n_layer):
        low = max(0, min(layer - window // 2, n_layer - window))  # the window, inside the model
        layers = range(low, min(n_layer, low + window))
        for t in range(len(ids)):
            scores[layer, t] = corrupted_probability(
                model, tokenizer, prompt, subject, target, [(x, t) for x in layers], **args)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return Trace(scores, clean, corrupted, tokens, subject_span(tokenizer, prompt, subject), kind)
