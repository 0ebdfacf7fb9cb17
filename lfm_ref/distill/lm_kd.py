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

Chapter: notebooks/09_distilling_language_models.ipynb
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import checks
from ..lm import encode, name_causal_lm_loss
from ..train import DictDataset
from ..utils import device_of, eval_mode, random_state_kept
from .kd import kd_loss


def _context_length(config) -> int:
    return config.n_positions if hasattr(config, "n_positions") else config.max_position_embeddings


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  labels: torch.Tensor, temperature: float = 1.0,
                  alpha: float = 0.5) -> torch.Tensor:
    """Per-position KD for causal LMs, averaged over the positions that have a label.

    ``*_logits`` are ``(batch, length, vocab)``; ``labels`` are ``(batch, length)``
    with ``-100`` where there is no target (Hugging Face's convention, as made by
    :func:`lfm_ref.lm.lm_dataset`). Position ``t`` predicts token ``t + 1``, so logits
    and labels are shifted exactly as the model's own loss does.
    """
    checks.tensor(student_logits, "student_logits", dim=3, floating=True)
    checks.tensor(teacher_logits, "teacher_logits", dim=3, floating=True)
    if teacher_logits.shape != student_logits.shape:
        shapes = f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        raise ValueError("student and teacher logits must both be (batch, length, "
                         f"vocab) of one shape, got {shapes} (do the models share a "
                         "vocabulary?)")
    checks.tensor(labels, "labels", dim=2, floating=False)
    if labels.shape != student_logits.shape[:2]:
        want, got = tuple(student_logits.shape[:2]), tuple(labels.shape)
        raise ValueError(f"labels must be (batch, length) = {want}, got {got}")
    targets = labels[:, 1:]  # the token that position t predicts: y_{t+1}
    valid = targets != -100
    if not valid.any():
        raise ValueError("no position has a label (all labels are -100): nothing to "
                         "distil")
    checks.class_indices(targets[valid], "labels", student_logits.shape[-1])
    # masked selection flattens the valid positions: (B, L - 1, V) -> (N, V)
    s, t = student_logits[:, :-1][valid], teacher_logits[:, :-1][valid]
    # alpha * T^2/N sum_t KL(p_T || q_S) + (1 - alpha) * NLL over the N positions
    return kd_loss(s, t, targets[valid], temperature, alpha)


def token_kd_objective(teacher: nn.Module | None, temperature: float = 1.0, alpha: float = 0.5) -> Callable:
    """A ``loss_fn`` for :func:`lfm_ref.fit` on language-model batches (``input_ids``, ``attention_mask``,
    ``labels``). The teacher runs on every batch (in eval mode, without gradient; its own mode comes
    back after each step), or its logits come with the batch as ``teacher_logits`` (computed once by
    :func:`with_teacher_logits`: exact, and it saves the teacher's forward pass).
    """
    if teacher is not None:
        checks.module(teacher, "teacher")
    checks.positive(temperature, "temperature")
    checks.probability(alpha, "alpha")

    def loss_fn(student, batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "teacher_logits" in batch:
            teacher_logits = batch["teacher_logits"]
        elif teacher is None:
            raise ValueError("token_kd_objective(None) needs batches with 'teacher_logits' (see with_teacher_logits)")
        else:
            with torch.no_grad(), eval_mode(teacher):
                teacher_logits = teacher(**inputs).logits
        return token_kd_loss(student(**inputs).logits, teacher_logits, batch["labels"], temperature, alpha)

    return loss_fn


@torch.no_grad()
def with_teacher_logits(teacher: nn.Module, data: DictDataset, batch_size: int = 256) -> DictDataset:
    """``data`` plus the teacher's logits at every position (offline token-level KD).

    Memory is ``texts x length x vocab`` floats: fine for the fact world's 252 words, too much for GPT-2's
    50,257 (there, run the teacher online with ``token_kd_objective(teacher)``). The teacher runs in
    eval mode and keeps its own mode.
    """
    checks.module(teacher, "teacher")
    if not isinstance(data, DictDataset) or not {"input_ids", "attention_mask"} <= set(data.tensors):
        raise TypeError("data must be a DictDataset with input_ids and attention_mask (see lfm_ref.lm.lm_dataset), "
                        f"got {type(data).__name__}")
    batch_size = checks.positive_int(batch_size, "batch_size")
    dev = device_of(teacher)
    ids, mask = data.tensors["input_ids"], data.tensors["attention_mask"]
    with eval_mode(teacher):
        logits = torch.cat([teacher(input_ids=ids[i:i + batch_size].to(dev),
                                    attention_mask=mask[i:i + batch_size].to(dev)).logits.cpu()
                            for i in range(0, len(ids), batch_size)])  # (texts, length, vocab)
    return DictDataset({**data.tensors, "teacher_logits": logits})


@torch.no_grad()
def teacher_corpus(teacher: nn.Module, tokenizer, n: int | None = None,
                   prompts: Sequence[str] | None = None, temperature: float = 1.0,
                   max_new_tokens: int | None = None, batch_size: int = 256,
                   seed: int | None = None) -> list[str]:
    """Texts written by ``teacher``: the transfer set of sequence-level KD.

    Without ``prompts``, ``n`` texts are sampled from the beginning-of-text token (no
    real data needed). With ``prompts``, each is continued (Kim & Rush's setting: the
    teacher's output for every source). ``temperature=0`` decodes greedily (the
    teacher's mode, which Kim & Rush approximate by beam search); ``temperature > 0``
    samples, from torch's global stream or, with ``seed``, from a stream of its own
    (the caller's is left as it was). Texts include their prompt, not special tokens.
    """
    checks.module(teacher, "teacher")
    if (n is None) == (prompts is None):
        raise ValueError("give either n (texts sampled from scratch) or prompts "
                         "(texts to continue), not both")
    n = None if n is None else checks.positive_int(n, "n")
    prompts = None if prompts is None else checks.texts(prompts, "prompts")
    temperature = checks.number(temperature, "temperature", low=0)
    if max_new_tokens is not None:
        max_new_tokens = checks.positive_int(max_new_tokens, "max_new_tokens")
    batch_size = checks.positive_int(batch_size, "batch_size")
    dev, context = device_of(teacher), _context_length(teacher.config)
    bos = tokenizer.bos_token_id
    bos = tokenizer.eos_token_id if bos is None else bos
    eos = tokenizer.eos_token_id
    if temperature > 0:  # yhat ~ p_T, the full distribution at temperature T
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0,
                    "top_p": 1.0}
    else:  # yhat = the greedy approximation of argmax p_T
        sampling = {"do_sample": False}
    total = n if prompts is None else len(prompts)
    texts: list[str] = []
    seeded = contextlib.nullcontext() if seed is None else random_state_kept(seed)
    with seeded, eval_mode(teacher):
        for start in range(0, total, batch_size):
            if prompts is None:  # every text starts from <bos>: (b, 1)
                rows = min(batch_size, total - start)
                ids = torch.full((rows, 1), bos, dtype=torch.long)
                mask = torch.ones_like(ids)
            else:
                batch = encode(tokenizer, prompts[start:start + batch_size], left=True)
                ids, mask = batch["input_ids"], batch["attention_mask"]
            if ids.shape[1] >= context:
                raise ValueError(f"a prompt has {ids.shape[1]} tokens, which fills the "
                                 f"teacher's context of {context}")
            new = min(max_new_tokens or context, context - ids.shape[1])
            # rows that finish early are padded with end-of-text, which decoding drops
            out = teacher.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                   max_new_tokens=new, pad_token_id=eos,
                                   eos_token_id=eos, **sampling)
            texts += tokenizer.batch_decode(out.cpu(), skip_special_tokens=True)
    return [t.strip() for t in texts]


def smaller_gpt2(teacher: nn.Module, n_layer: int, n_embd: int | None = None, n_head: int | None = None,
                 copy_layers: bool = False, seed: int | None = None) -> nn.Module:
    """A student: the teacher's GPT-2 configuration (vocabulary, context) with fewer layers or a smaller width.

    ``copy_layers=True`` is DistilBERT's initialisation: the student's layers are every ``k``-th layer of
    the teacher (``k = teacher layers // student layers``), with its embeddings and final norm; it needs
    the teacher's width. ``seed`` makes the random initialisation reproducible without touching the
    caller's random streams (the weights are those ``torch.manual_seed(seed)`` would give).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    checks.module(teacher, "teacher")
    model_type = getattr(getattr(teacher, "config", None), "model_type", None)
    if model_type != "gpt2":
        raise TypeError(f"smaller_gpt2 needs a GPT-2 teacher, got model_type {model_type!r}")
    depth = teacher.config.n_layer
    n_layer = checks.integer(n_layer, "n_layer", minimum=1)
    if n_layer > depth:
        raise ValueError(f"n_layer must be an int in [1, {depth}] (the teacher's depth), got {n_layer}")
    n_embd = teacher.config.n_embd if n_embd is None else checks.positive_int(n_embd, "n_embd")
    if n_head is None:
        n_head = teacher.config.n_head if n_embd % teacher.config.n_head == 0 else 1
    n_head = checks.positive_int(n_head, "n_head")
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
    if copy_layers and n_embd != teacher.config.n_embd:
        raise ValueError(f"copy_layers needs the teacher's width {teacher.config.n_embd}, got n_embd={n_embd}")
    config = GPT2Config(**{**teacher.config.to_dict(), "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head})
    with contextlib.nullcontext() if seed is None else random_state_kept(seed):
        student = name_causal_lm_loss(GPT2LMHeadModel(config))
    if copy_layers:
        step = depth // n_layer  # student layer i <- teacher layer i * k
        source = teacher.transformer
        student.transformer.wte.load_state_dict(source.wte.state_dict())
        student.transformer.wpe.load_state_dict(source.wpe.state_dict())
        student.transformer.ln_f.load_state_dict(source.ln_f.state_dict())
        for i, block in enumerate(student.transformer.h):
            block.load_state_dict(source.h[i * step].state_dict())
    return student.to(device_of(teacher))
