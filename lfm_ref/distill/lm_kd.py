"""Distilling a causal language model: token-level and sequence-level knowledge distillation.

Kim & Rush, 2016, "Sequence-Level Knowledge Distillation" (EMNLP; arXiv:1606.07947), and the student
construction of DistilBERT / DistilGPT-2 (Sanh et al., 2019, arXiv:1910.01108).

**Token-level KD** (Kim & Rush's "word-level" KD) applies Hinton's loss at every position ``t`` of a
training text, where both models predict the next token from the same prefix ``y_<t``:

    L_tok = T^2 / N * sum_{t valid} KL( p_T(. | y_<t) || q_S(. | y_<t) )        (N valid positions)
    L     = alpha * L_tok + (1 - alpha) * NLL(y)

**Sequence-level KD** replaces the data distribution by the teacher's distribution over whole sequences
and approximates that by texts the teacher writes (its beam/greedy output, or samples):

    L_seq = - sum_t log q_S(yhat_t | yhat_<t),    yhat ~ p_T

which is ordinary language-model training on a teacher-written corpus, so it needs no code beyond
:func:`teacher_corpus`. Started from the beginning-of-text token, that corpus needs no real text at
all: sequence-level KD of an unconditional LM is data-free.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..lm import _check_texts, encode, name_causal_lm_loss
from ..train import DictDataset
from ..utils import seed_everything
from .kd import kd_loss


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 1.0, alpha: float = 0.5) -> torch.Tensor:
    """Per-position KD for causal LMs, averaged over the positions whose next token is a real label.

    ``*_logits`` are ``(batch, length, vocab)``; ``labels`` are ``(batch, length)`` with ``-100`` where
    there is no target (Hugging Face's convention, as made by :func:`lfm_ref.lm.lm_dataset`). Position
    ``t`` predicts token ``t + 1``, so logits and labels are shifted exactly as the model's own loss does.
    """
    if student_logits.dim() != 3 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student and teacher logits must both be (batch, length, vocab) of one shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)} "
                         "(do the two models share a vocabulary?)")
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(f"labels must be (batch, length) = {tuple(student_logits.shape[:2])}, got {tuple(labels.shape)}")
    targets = labels[:, 1:]
    valid = targets != -100
    if not valid.any():
        raise ValueError("no position has a label (every label is -100): there is nothing to distil")
    # logits at t predict the token at t + 1; masked selection flattens the valid positions to (N, vocab)
    s, t = student_logits[:, :-1][valid], teacher_logits[:, :-1][valid]
    return kd_loss(s, t, targets[valid], temperature, alpha)  # alpha * T^2 KL + (1 - alpha) * NLL, per token


def token_kd_objective(teacher: nn.Module | None, temperature: float = 1.0, alpha: float = 0.5) -> Callable:
    """A ``loss_fn`` for :func:`lfm_ref.fit` on language-model batches (``input_ids``, ``attention_mask``,
    ``labels``). The teacher runs on every batch, or its logits come with the batch as ``teacher_logits``
    (computed once by :func:`with_teacher_logits`: exact, and it saves the teacher's forward pass).
    """
    if teacher is not None:
        teacher.eval().requires_grad_(False)

    def loss_fn(student, batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "teacher_logits" in batch:
            teacher_logits = batch["teacher_logits"]
        elif teacher is None:
            raise ValueError("token_kd_objective(None) needs batches with 'teacher_logits' (see with_teacher_logits)")
        else:
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits
        return token_kd_loss(student(**inputs).logits, teacher_logits, batch["labels"], temperature, alpha)

    return loss_fn


@torch.no_grad()
def with_teacher_logits(teacher: nn.Module, data: DictDataset, batch_size: int = 256) -> DictDataset:
    """``data`` plus the teacher's logits at every position (offline token-level KD).

    Memory is ``texts x length x vocab`` floats: fine for the fact world's 252 words, too much for GPT-2's
    50,257 (there, run the teacher online with ``token_kd_objective(teacher)``).
    """
    if not isinstance(data, DictDataset) or not {"input_ids", "attention_mask"} <= set(data.tensors):
        raise TypeError("data must be a DictDataset with input_ids and attention_mask (see lfm_ref.lm.lm_dataset)")
    teacher.eval()
    dev = next(teacher.parameters()).device
    ids, mask = data.tensors["input_ids"], data.tensors["attention_mask"]
    logits = torch.cat([teacher(input_ids=ids[i:i + batch_size].to(dev),
                                attention_mask=mask[i:i + batch_size].to(dev)).logits.cpu()
                        for i in range(0, len(ids), batch_size)])
    return DictDataset({**data.tensors, "teacher_logits": logits})


@torch.no_grad()
def teacher_corpus(teacher: nn.Module, tokenizer, n: int | None = None, prompts: Sequence[str] | None = None,
                   temperature: float = 1.0, max_new_tokens: int | None = None, batch_size: int = 256,
                   seed: int | None = None) -> list[str]:
    """Texts written by ``teacher``: the transfer set of sequence-level KD.

    Without ``prompts``, ``n`` texts are sampled from the beginning-of-text token (no real data needed).
    With ``prompts``, each is continued (Kim & Rush's setting: the teacher's output for every source).
    ``temperature=0`` decodes greedily (the teacher's mode, which Kim & Rush approximate by beam search);
    ``temperature > 0`` samples. Returned texts include their prompt and omit special tokens.
    """
    if (n is None) == (prompts is None):
        raise ValueError("give either n (texts sampled from scratch) or prompts (texts to continue), not both")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if prompts is not None:
        prompts = _check_texts(prompts, "prompts")
    if seed is not None:
        seed_everything(seed)
    teacher.eval()
    dev = next(teacher.parameters()).device
    context = teacher.config.n_positions if hasattr(teacher.config, "n_positions") else teacher.config.max_position_embeddings
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False}
    total = n if prompts is None else len(prompts)
    texts: list[str] = []
    for start in range(0, total, batch_size):
        if prompts is None:
            ids = torch.full((min(batch_size, total - start), 1), bos, dtype=torch.long)
            mask = torch.ones_like(ids)
        else:
            batch = encode(tokenizer, prompts[start:start + batch_size], left=True)
            ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.shape[1] >= context:
            raise ValueError(f"a prompt has {ids.shape[1]} tokens, which fills the teacher's context of {context}")
        new = min(max_new_tokens or context, context - ids.shape[1])
        # rows that finish early are filled with end-of-text, which decoding drops
        out = teacher.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=new,
                               pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **sampling)
        texts += tokenizer.batch_decode(out.cpu(), skip_special_tokens=True)
    return [t.strip() for t in texts]


def smaller_gpt2(teacher: nn.Module, n_layer: int, n_embd: int | None = None, n_head: int | None = None,
                 copy_layers: bool = False, seed: int | None = None) -> nn.Module:
    """A student: the teacher's GPT-2 configuration (vocabulary, context) with fewer layers or a smaller width.

    ``copy_layers=True`` is DistilBERT's initialisation: the student's layers are every ``k``-th layer of
    the teacher (``k = teacher layers // student layers``), with its embeddings and final norm; it needs
    the teacher's width.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if getattr(teacher.config, "model_type", None) != "gpt2":
        raise TypeError(f"smaller_gpt2 needs a GPT-2 teacher, got model_type {getattr(teacher.config, 'model_type', None)!r}")
    if not isinstance(n_layer, int) or not 1 <= n_layer <= teacher.config.n_layer:
        raise ValueError(f"n_layer must be an int in [1, {teacher.config.n_layer}] (the teacher's depth), got {n_layer!r}")
    n_embd = n_embd or teacher.config.n_embd
    n_head = n_head or (teacher.config.n_head if n_embd % teacher.config.n_head == 0 else 1)
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
    if copy_layers and n_embd != teacher.config.n_embd:
        raise ValueError(f"copy_layers needs the teacher's width {teacher.config.n_embd}, got n_embd={n_embd}")
    if seed is not None:
        seed_everything(seed)
    config = GPT2Config(**{**teacher.config.to_dict(), "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head})
    student = name_causal_lm_loss(GPT2LMHeadModel(config))
    if copy_layers:
        step = teacher.config.n_layer // n_layer
        source = teacher.transformer
        student.transformer.wte.load_state_dict(source.wte.state_dict())
        student.transformer.wpe.load_state_dict(source.wpe.state_dict())
        student.transformer.ln_f.load_state_dict(source.ln_f.state_dict())
        for i, block in enumerate(student.transformer.h):
            block.load_state_dict(source.h[i * step].state_dict())
    return student.to(next(teacher.parameters()).device)
