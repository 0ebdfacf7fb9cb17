"""Input engineering with gradients: soft prompts, prefixes, prompt encoders, and hard prompts found by
gradient. The language model stays frozen; only what is put in front of its input is learned.

- **Prompt tuning** (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
  EMNLP; arXiv:2104.08691): ``p`` trainable vectors ``P`` are prepended to the input embeddings,
  ``[P; E(x)]``, initialised from the embeddings of vocabulary tokens (or of a text).
- **P-tuning** (Liu et al., 2021, "GPT Understands, Too"; arXiv:2103.10385): the prompt is the output of
  a small prompt encoder, ``P = MLP(P')`` (reparameterisation eases optimisation).
- **Prefix tuning** (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
  ACL; arXiv:2101.00190): every attention layer gets ``p`` trainable key and value vectors,
  ``softmax(q [K_P; K]^T) [V_P; V]``, produced during training by a reparameterisation MLP from ``p``
  smaller vectors, ``[K_P; V_P]_l = MLP(P')``.
- **PEZ** (Wen et al., 2023, "Hard Prompts Made Easy: Gradient-Based Discrete Optimization for Prompt
  Tuning and Discovery", NeurIPS; arXiv:2302.03668): a soft prompt that is projected onto the nearest
  vocabulary embeddings in every forward pass; the gradient at the projection updates the continuous
  prompt (a straight-through estimator), and the projection is a *hard* prompt: real tokens.

The wrappers take the arguments of a Hugging Face causal LM (``input_ids``, ``attention_mask``,
``labels``) and return its output, with logits for the input positions only, so that ``lfm_ref.fit``
and ``lfm_ref.lm`` work on them unchanged. They are the "wrap" pattern of Part I (a module around the
frozen model), where LoRA and adapters "inject" layers into it.

Chapter: notebooks/03_prompts.ipynb.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks


def _check_lm(model: nn.Module, n_tokens: int) -> int | None:
    """Check the model and the prompt length; return the model's context length (None if it has none)."""
    if not hasattr(model, "get_input_embeddings") or not hasattr(model, "config"):
        raise TypeError(f"expected a Hugging Face causal LM (with get_input_embeddings and config), got "
                        f"{type(model).__name__}")
    checks.positive_int(n_tokens, "n_tokens")
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if context is not None and n_tokens >= context:
        raise ValueError(f"a prompt of {n_tokens} tokens leaves no room in the model's context of {context} tokens")
    return context


class _PromptedLM(nn.Module):
    """The frozen ``model`` with ``n_tokens`` virtual tokens in front of every input."""

    def __init__(self, model: nn.Module, n_tokens: int):
        super().__init__()
        self.context = _check_lm(model, n_tokens)
        self.model = model.requires_grad_(False)
        self.n_tokens = n_tokens

    def _prepare(self, input_ids, attention_mask):
        checks.tensor(input_ids, "input_ids", dim=2, floating=False)
        b, n = input_ids.shape
        if self.context is not None and self.n_tokens + n > self.context:
            raise ValueError(f"{self.n_tokens} virtual tokens + an input of {n} tokens exceed the model's context "
                             f"of {self.context} tokens")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = attention_mask.new_ones(b, self.n_tokens)
        return torch.cat([ones, attention_mask], dim=1)  # (B, p + n): the prompt is always seen


class PromptTuning(_PromptedLM):
    """``[P; E(x)]``: ``n_tokens`` soft prompt vectors before the input embeddings (Lester et al., 2021).

    ``init_ids``: token ids whose embeddings initialise ``P`` (the paper's "sampled vocabulary" or a text's
    ids, repeated to length); random vocabulary tokens by default. ``encoder_hidden``: if set, P-tuning's
    reparameterisation ``P = MLP(P')`` with that hidden width (Liu et al., 2021).

    ``placeholder_id``: if set, the prompt goes *inside* the input instead of before it, as in P-tuning's
    templates ``[P_0..P_i] x [P_i+1..P_m] y`` (Liu et al., 2021, Section 3; LAMA: ``x [P] y``): every row of
    ``input_ids`` holds exactly ``n_tokens`` copies of that token id, and their embeddings are replaced, in
    order, by ``P``. The input keeps its positions, mask and labels.
    """

    def __init__(self, model: nn.Module, n_tokens: int = 8, init_ids: torch.Tensor | None = None,
                 encoder_hidden: int | None = None, seed: int = 0, placeholder_id: int | None = None):
        super().__init__(model, n_tokens)
        vocab = model.get_input_embeddings().weight.shape[0]
        if placeholder_id is not None:
            placeholder_id = checks.integer(placeholder_id, "placeholder_id", minimum=0)
            if placeholder_id >= vocab:
                raise ValueError(f"placeholder_id must be a token id in [0, {vocab}), got {placeholder_id}")
        self.placeholder_id = placeholder_id
        table = model.get_input_embeddings().weight
        if init_ids is None:
            g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
            init_ids = torch.randint(0, table.shape[0], (n_tokens,), generator=g)
        if not isinstance(init_ids, torch.Tensor):
            if isinstance(init_ids, str) or not all(isinstance(i, int) for i in init_ids):
                raise TypeError(f"init_ids must be token ids (a tensor or a list of ints), got {init_ids!r:.60}")
            init_ids = torch.tensor(init_ids, dtype=torch.long)
        init_ids = checks.tensor(init_ids, "init_ids", floating=False).flatten()
        if init_ids.numel() == 0 or init_ids.min() < 0 or init_ids.max() >= table.shape[0]:
            raise ValueError(f"init_ids must be non-empty token ids in [0, {table.shape[0]}), "
                             f"got {init_ids.tolist()}")
        init_ids = init_ids.repeat(-(-n_tokens // init_ids.numel()))[:n_tokens].to(table.device)
        self.prompt_embeddings = nn.Parameter(table[init_ids].detach().clone())
        self.encoder = None
        if encoder_hidden is not None:
            checks.positive_int(encoder_hidden, "encoder_hidden")
            d = table.shape[1]
            self.encoder = nn.Sequential(nn.Linear(d, encoder_hidden), nn.ReLU(), nn.Linear(encoder_hidden, d)).to(
                table.device)

    def prompt(self) -> torch.Tensor:
        """The ``(n_tokens, d)`` vectors put before the input."""
        if self.encoder is None:
            return self.prompt_embeddings
        return self.prompt_embeddings + self.encoder(self.prompt_embeddings)  # residual: starts near the init

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        if self.placeholder_id is not None:
            return self._forward_inside(input_ids, attention_mask, labels, **kwargs)
        mask = self._prepare(input_ids, attention_mask)
        embeds = self.model.get_input_embeddings()(input_ids)  # E(x), (B, n, d)
        prompt = self.prompt().to(embeds.dtype).expand(len(input_ids), -1, -1)  # P
        if labels is not None:  # no loss on the virtual tokens
            ignore = labels.new_full((len(labels), self.n_tokens), -100)
            labels = torch.cat([ignore, labels], dim=1)
        inputs = torch.cat([prompt, embeds], dim=1)  # [P; E(x)], (B, p + n, d)
        out = self.model(inputs_embeds=inputs, attention_mask=mask, labels=labels,
                         **kwargs)
        # the input positions only, aligned with input_ids
        out.logits = out.logits[:, self.n_tokens:]
        return out

    def _forward_inside(self, input_ids, attention_mask, labels, **kwargs):
        """P-tuning's placement: the placeholder tokens' embeddings become ``P``."""
        checks.tensor(input_ids, "input_ids", dim=2, floating=False)
        slots = input_ids == self.placeholder_id  # (B, n)
        counts = slots.sum(1)
        if (counts != self.n_tokens).any():
            raise ValueError(f"input_ids must hold {self.n_tokens} placeholder tokens "
                             f"(id {self.placeholder_id}) in every row, got "
                             f"{sorted(set(counts.tolist()))}")
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, n, d)
        prompt = self.prompt().to(embeds.dtype)
        prompt = prompt.expand(len(input_ids), -1, -1)  # (B, p, d)
        # row by row, the k-th placeholder gets P_k
        embeds = embeds.masked_scatter(slots[..., None].expand_as(embeds), prompt)
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask,
                          labels=labels, **kwargs)


class HardPromptPEZ(PromptTuning):
    """PEZ (Wen et al., 2023): the forward pass sees the nearest vocabulary embeddings
    of the soft prompt; the gradient flows straight through the projection to the soft
    prompt."""

    def nearest_ids(self) -> torch.Tensor:
        """The hard prompt: for each soft vector, the vocabulary token of highest cosine
        similarity."""
        table = self.model.get_input_embeddings().weight
        soft = F.normalize(self.prompt_embeddings, dim=-1)  # (p, d)
        cosine = soft @ F.normalize(table, dim=-1).T  # (p, vocab)
        return cosine.argmax(-1)  # (p,)

    def prompt(self) -> torch.Tensor:
        table = self.model.get_input_embeddings().weight
        projected = table[self.nearest_ids()]  # (p, d)
        # forward: the projected (hard) prompt; backward: the identity onto the soft one
        return self.prompt_embeddings + (projected - self.prompt_embeddings).detach()


class PrefixTuning(_PromptedLM):
    """Trainable keys and values at every attention layer (Li & Liang, 2021), as a Hugging Face cache.

    During training ``[K_P; V_P]_l = MLP(P')`` with ``P'`` of shape ``(n_tokens, d)`` (the paper's
    reparameterisation; ``encoder_hidden=None`` learns the prefixes directly). The layout of the MLP's
    output, ``(n_tokens, layers, 2, heads, head_dim)``, is PEFT's, so weights can be exchanged.
    """

    def __init__(self, model: nn.Module, n_tokens: int = 8, encoder_hidden: int | None = 64):
        super().__init__(model, n_tokens)
        config = model.config
        self.layers = config.num_hidden_layers
        self.heads = config.num_attention_heads
        d = config.hidden_size
        dev = model.get_input_embeddings().weight.device
        out = self.layers * 2 * d
        if encoder_hidden is None:
            self.prefix = nn.Parameter(0.02 * torch.randn(n_tokens, out, device=dev))
            self.encoder = None
        else:
            checks.positive_int(encoder_hidden, "encoder_hidden")
            self.prefix = nn.Parameter(0.02 * torch.randn(n_tokens, d, device=dev))
            self.encoder = nn.Sequential(nn.Linear(d, encoder_hidden), nn.Tanh(),
                                         nn.Linear(encoder_hidden, out)).to(dev)
        # transformers 5 calls the cache argument `cache` (`past_key_values` goes in 5.40); 4.x does not
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def key_values(self) -> torch.Tensor:
        """``(layers, 2, heads, n_tokens, head_dim)``: each layer's prefix keys (index
        0) and values (index 1)."""
        flat = self.prefix if self.encoder is None else self.encoder(self.prefix)
        # [K_P; V_P]_l = MLP(P'), (p, layers * 2 * d)
        kv = flat.view(self.n_tokens, self.layers, 2, self.heads, -1)  # (p, L, 2, H, .)
        return kv.permute(1, 2, 3, 0, 4)  # (L, 2, H, p, d / H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        from transformers import DynamicCache

        mask = self._prepare(input_ids, attention_mask)
        kv = self.key_values().to(self.model.dtype)
        cache = DynamicCache()  # a fresh cache per call: the model appends the input's keys to it
        b = len(input_ids)
        for layer in range(self.layers):  # softmax(q [K_P; K]^T) [V_P; V]: the prefix comes first
            keys, values = kv[layer, 0].expand(b, -1, -1, -1), kv[layer, 1].expand(b, -1, -1, -1)
            cache.update(keys, values, layer)  # (B, H, p, d / H) each
        kwargs[self._cache_arg] = cache
        return self.model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False, **kwargs)


def few_shot_prompt(demonstrations, query: str, separator: str = " ") -> str:
    """In-context learning's input: ``demo_1 answer_1 SEP ... demo_k answer_k SEP query`` from
    ``(prompt, answer)`` pairs (Brown et al., 2020)."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if isinstance(demonstrations, (str, dict)) or not isinstance(demonstrations, (list, tuple)):
        raise TypeError(f"demonstrations must be a list of (prompt, answer) pairs, got {demonstrations!r:.60}")
    if not all(isinstance(d, (tuple, list)) and len(d) == 2 for d in demonstrations):
        raise TypeError(f"demonstrations must be (prompt, answer) pairs, got {demonstrations!r:.60}")
    parts = [f"{p} {a}" for p, a in demonstrations] + [query]
    return separator.join(parts)
