"""Black-box access: a model reachable only through its answers, for every family that learns from one.

The book meets the same situation three times: tuning a prompt for a language model behind a paid
service (chapter 4), distilling a classifier that only returns probabilities (chapter 8b), and
meta-learning from models behind APIs. One wrapper serves all three:

- :class:`BlackBoxAPI`: the base. Every answer is computed under ``torch.no_grad`` in eval mode (the
  caller's model keeps its own mode), so no gradient can reach the model, and :attr:`queries` counts
  every input sent, which is what the service would bill.
- :class:`ClassifierAPI`: ``api(x)`` answers class probabilities, the top-k of them, or top-1 labels.
- :class:`ScoreAPI`: the "language model as a service" of Black-Box Tuning (Sun et al., 2022;
  arXiv:2201.03514): the log-probabilities of a fixed set of one-token answers after ``text + prompt``.
- :func:`api_logits`: logits recovered from probabilities, up to a constant (DFME; arXiv:2011.14779).
- :func:`zeroth_order_grad`: the forward-difference gradient estimate that replaces back-propagation
  through the API (Nesterov & Spokoiny, 2017; DFME Eq. 6), and :func:`zo_sgd`, plain gradient descent
  on it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import checks
from .lm import encode, target_ids
from .utils import device_of, eval_mode


class BlackBoxAPI:
    """A model behind an API: answers come without gradients, and :attr:`queries` counts the inputs.

    Subclasses define what an answer is; each one calls :meth:`_forward`, the only door to the model.
    """

    def __init__(self, model: nn.Module):
        self._model = checks.module(model)
        self.queries = 0

    @property
    def device(self) -> torch.device:
        return device_of(self._model)

    def _forward(self, n_queries: int, *args, **kwargs):
        """The model's output on ``args``/``kwargs``, billed as ``n_queries`` queries."""
        self.queries += n_queries
        with torch.no_grad(), eval_mode(self._model):
            return self._model(*args, **kwargs)


class ClassifierAPI(BlackBoxAPI):
    """``api(x)``: a classifier's class probabilities (``output="probs"``), the ``top_k`` largest of them
    with the rest reported as 0 (``top_k=k``), or only the top-1 labels (``output="label"``)."""

    def __init__(self, model: nn.Module, output: str = "probs", top_k: int | None = None):
        super().__init__(model)
        self.output = checks.choice(output, "output", ("probs", "label"))
        self.top_k = None if top_k is None else checks.positive_int(top_k, "top_k")
        if self.top_k is not None and output != "probs":
            raise ValueError("top_k applies to output='probs' only")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor(x, "x", floating=True)
        logits = self._forward(len(x), x.to(self.device))
        if self.output == "label":
            return logits.argmax(-1)
        probs = logits.softmax(-1)
        if self.top_k is not None:  # keep the k largest, report the rest as 0 (not renormalised)
            kept = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
            probs = torch.zeros_like(probs).scatter_(-1, kept.indices, kept.values)
        return probs


class ScoreAPI(BlackBoxAPI):
    """Scores of ``candidates`` (one token each) as the next word after ``text + prompt``, batched.

    :meth:`hard` takes text prompts, :meth:`soft` prompt vectors appended after the text (the "service"
    accepts embeddings, as Black-Box Tuning assumes). Both return log-probabilities over the candidates,
    ``(prompts, texts, K)``, and bill one query per (prompt, text) pair.
    """

    def __init__(self, model: nn.Module, tokenizer, candidates: Sequence[str]):
        super().__init__(model)
        candidates = checks.texts(candidates, "candidates")
        if len(candidates) < 2:
            raise ValueError(f"an API needs at least 2 candidate answers, got {len(candidates)}")
        self._tok = tokenizer
        self.candidates = candidates
        self._ids = target_ids(tokenizer, candidates)
        self.embedding_dim = model.get_input_embeddings().weight.shape[1]

    def _score(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dev = self.device
        embeds, mask = embeds.to(dev), mask.to(dev)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding: each row's positions start at 0
        logits = self._forward(len(embeds), inputs_embeds=embeds, attention_mask=mask,
                               position_ids=positions).logits[:, -1]  # (N, vocab)
        return logits[:, self._ids.to(dev)].log_softmax(-1).cpu()  # log p(candidate k), (N, K)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._model.get_input_embeddings()(input_ids.to(self.device))

    def hard(self, texts: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
        """Log-probabilities ``(len(prompts), len(texts), K)`` for ``text + " " + prompt``."""
        texts, prompts = checks.texts(texts), checks.texts(prompts, "prompts")
        joined = [f"{t} {p}".strip() for p in prompts for t in texts]
        batch = encode(self._tok, joined, left=True)  # the next word follows the last column
        embeds = self._embed(batch["input_ids"])
        return self._score(embeds, batch["attention_mask"]).view(len(prompts), len(texts), -1)

    def soft(self, texts: Sequence[str], prompts: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(P, len(texts), K)`` with prompt vectors ``(P, p, d)`` after each text."""
        texts = checks.texts(texts)
        checks.tensor(prompts, "prompts", dim=3, floating=True)
        if prompts.shape[-1] != self.embedding_dim:
            raise ValueError(f"prompts must have shape (P, p, {self.embedding_dim}), got {tuple(prompts.shape)}")
        batch = encode(self._tok, texts, left=True)
        text_embeds = self._embed(batch["input_ids"])  # (B, L, d)
        n_prompts, p = prompts.shape[:2]
        embeds = torch.cat([text_embeds.expand(n_prompts, -1, -1, -1),  # (P, B, L + p, d): [E(x); p]
                            prompts.to(self.device, text_embeds.dtype)[:, None].expand(-1, len(texts), -1, -1)],
                           dim=2)
        mask = torch.cat([batch["attention_mask"], torch.ones(len(texts), p, dtype=torch.long)], dim=1)
        out = self._score(embeds.flatten(0, 1), mask.repeat(n_prompts, 1))
        return out.view(n_prompts, len(texts), -1)


def api_logits(api: ClassifierAPI, x: torch.Tensor) -> torch.Tensor:
    """Logits recovered from an API's probabilities, up to a constant: ``log p - mean(log p)`` (DFME)."""
    if not isinstance(api, ClassifierAPI) or api.output != "probs":
        raise ValueError("recovering logits needs a ClassifierAPI that returns probabilities (output='probs')")
    log_p = api(x).clamp_min(1e-12).log()
    return log_p - log_p.mean(-1, keepdim=True)


def zeroth_order_grad(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      directions: int = 1, eps: float = 1e-3,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Forward-difference estimate of ``df/dx`` for a per-example ``f`` (DFME, Eq. 6).

    ``f`` maps a batch ``(b, ...)`` to ``(b,)``. With ``u_i`` uniform on the unit sphere
    and ``d`` the dimension of one example,
    ``g = d/m * sum_i (f(x + eps u_i) - f(x)) / eps * u_i``. All ``directions``
    perturbations go to ``f`` as one batch: ``f`` is queried for
    ``b * (directions + 1)`` inputs.
    """
    if not callable(f):
        raise TypeError("f must be a function from a batch to one value per example, "
                        f"got {type(f).__name__}")
    checks.tensor(x, "x", floating=True)
    directions = checks.positive_int(directions, "directions")
    eps = checks.positive(eps, "eps")
    b, d = len(x), x[0].numel()
    ones = [1] * (x.dim() - 1)  # broadcast one number per example over its entries
    u = torch.randn((directions, *x.shape), generator=generator, device="cpu")
    u = u.to(x.device)
    u = u / u.flatten(2).norm(dim=-1).view(directions, b, *ones)  # (m, b, ...), unit
    fx = f(x)                                                      # (b,)
    fu = f((x.unsqueeze(0) + eps * u).flatten(0, 1)).view(directions, b)  # (m, b)
    slope = (fu - fx) / eps  # directional derivatives u_i . grad f, (m, b)
    return d / directions * (slope.view(directions, b, *ones) * u).sum(0)


def zo_sgd(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int, lr: float,
           directions: int = 8, eps: float = 1e-3, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Minimise ``f`` (a batch ``(n, dim) -> (n,)``) from ``x0`` (``(dim,)``) by gradient descent on
    :func:`zeroth_order_grad`: ``x <- x - lr * g_hat(x)``. Returns the last point and ``f`` before each step."""
    checks.tensor(x0, "x0", dim=1, floating=True)
    steps, lr = checks.positive_int(steps, "steps"), checks.positive(lr, "lr")
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    x, history = x0.clone()[None], []  # (1, dim): one example for the estimator
    for _ in range(steps):
        history.append(float(f(x)[0]))
        x = x - lr * zeroth_order_grad(f, x, directions, eps, generator=g)
    return x[0], history
