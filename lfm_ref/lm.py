"""Small helpers for causal language models (TinyGPT and any Hugging Face ``*ForCausalLM``).

Chapter: notebooks/00_foundation_models.ipynb (first used there; every language-model chapter uses them).
Every helper that runs a model does it in eval mode and gives the model back the mode it had.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import checks
from .train import DictDataset
from .utils import device_of, eval_mode


def name_causal_lm_loss(model):
    """Record on ``model`` that its loss is the causal-LM loss, and return it.

    transformers 5 infers a model's loss from its class name; ``GPT2LMHeadModel`` names none, so every
    chapter would print that ``loss_type=None`` is unrecognised and that it falls back to the causal-LM
    loss. That fallback is the right loss: saying so up front changes nothing but the noise.
    """
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode(tokenizer, texts: Sequence[str], left: bool = False) -> dict[str, torch.Tensor]:
    """Padded ``input_ids`` and ``attention_mask`` for ``texts`` (the tokenizer adds its specials).

    Right padding by default; ``left=True`` pads on the left, so that generation continues every row
    from the same column.
    """
    texts = checks.texts(texts)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), _pad_id(tokenizer), dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, T), 1 on real tokens
    for i, row in enumerate(ids):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, cols] = torch.tensor(row)
        mask[i, cols] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def lm_dataset(tokenizer, texts: Sequence[str]) -> DictDataset:
    """A causal-LM training set: every text followed by end-of-sequence, padding masked out of the loss."""
    batch = encode(tokenizer, [t + " " + tokenizer.eos_token for t in checks.texts(texts)])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # -100: ignored by the loss
    return DictDataset({**batch, "labels": labels})


def prompt_answer_dataset(tokenizer, pairs: Sequence[tuple[str, str]]) -> DictDataset:
    """Supervised pairs ``(prompt, answer)``: the text is ``prompt answer <eos>``, and
    only the answer and the end-of-sequence token are in the loss (instruction tuning's
    usual masking)."""
    bad = isinstance(pairs, (str, tuple)) or len(pairs) == 0
    if bad or not all(len(p) == 2 for p in pairs):
        raise ValueError("pairs must be a non-empty list of (prompt, answer) string "
                         f"pairs, got {type(pairs).__name__}")
    prompts = checks.texts([p for p, _ in pairs], "prompts")
    answers = checks.texts([a for _, a in pairs], "answers")
    texts = [f"{p} {a} {tokenizer.eos_token}" for p, a in zip(prompts, answers)]
    batch = encode(tokenizer, texts)
    prompt_len = torch.tensor([len(tokenizer(p)["input_ids"]) for p in prompts])
    cols = torch.arange(batch["input_ids"].shape[1])
    # the loss covers position t iff t >= len(prompt) and t is not padding; (B, T)
    in_loss = (cols[None] >= prompt_len[:, None]) & (batch["attention_mask"] == 1)
    labels = batch["input_ids"].masked_fill(~in_loss, -100)  # -100: ignored by the loss
    return DictDataset({**batch, "labels": labels})


def target_ids(tokenizer, targets: Sequence[str]) -> torch.Tensor:
    """The token of each target word as it follows a prompt (with a leading space), shape ``(len(targets),)``.

    Every target must be one token after a space: a next-token score of a longer word would silently
    score its first piece only, so a ValueError names the targets that are not.
    """
    targets = checks.texts(targets, "targets")
    pieces = [tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in targets]
    longer = [t for t, ids in zip(targets, pieces) if len(ids) != 1]
    if longer:
        raise ValueError(f"targets must each be a single token after a space; {len(longer)} of "
                         f"{len(targets)} are not: {longer[:10]}")
    return torch.tensor([ids[0] for ids in pieces])


def at_last_token(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``values[i, t_i]`` with ``t_i`` the last real (unpadded) position of row ``i`` of a right-padded batch:
    the position whose output predicts the token that follows the text. ``(B, T, ...)`` -> ``(B, ...)``."""
    last = attention_mask.sum(1) - 1  # (B,)
    return values[torch.arange(len(values), device=values.device), last.to(values.device)]


@torch.no_grad()
def next_token_logits(model, tokenizer, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Logits of the token that follows each prompt, shape ``(len(prompts), vocab)``."""
    batch_size = checks.positive_int(batch_size, "batch_size")
    dev = device_of(model)
    batch = encode(tokenizer, prompts)
    out = []
    with eval_mode(model):
        for start in range(0, len(batch["input_ids"]), batch_size):
            ids = batch["input_ids"][start:start + batch_size].to(dev)
            mask = batch["attention_mask"][start:start + batch_size].to(dev)
            out.append(at_last_token(model(input_ids=ids, attention_mask=mask).logits, mask))  # (b, V)
    return torch.cat(out)


def next_token_hits(model, tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
    """For each prompt, whether its greedy next token is its target (each target one token), shape
    ``(len(prompts),)``, on the CPU: the per-prompt view of :func:`next_token_accuracy`."""
    prompts, targets = checks.texts(prompts, "prompts"), checks.texts(targets, "targets")
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets")
    answers = target_ids(tokenizer, targets)
    return next_token_logits(model, tokenizer, prompts).argmax(-1).cpu() == answers


def next_token_accuracy(model, tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of prompts whose greedy next token is the target (each target one token)."""
    return next_token_hits(model, tokenizer, prompts, targets).float().mean().item()


def fact_recall(model, tokenizer, facts, template: int = 0) -> float:
    """Fraction of ``facts`` (``lfm_ref.data.Fact``) the model completes correctly from ``template``."""
    facts = checks.non_empty(facts, "facts")
    prompts = [f.prompt(template) for f in facts]
    return next_token_accuracy(model, tokenizer, prompts, [f.object for f in facts])


@torch.no_grad()
def complete(model, tokenizer, prompt: str, max_new_tokens: int = 5) -> str:
    """Greedy continuation of one prompt, decoded (the new text only)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    max_new_tokens = checks.positive_int(max_new_tokens, "max_new_tokens")
    enc = tokenizer(prompt, return_tensors="pt").to(device_of(model))
    with eval_mode(model):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=_pad_id(tokenizer), eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
