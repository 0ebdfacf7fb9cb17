"""What every editor of Part V shares: the request, the edit it returns, and one way to score it.

An editor changes one piece of a model's knowledge, ``(subject, relation, o) -> o*``, and should
change nothing else. Every editor of the book is called the same way,

    edit = editor.edit(model, tokenizer, requests)      # an Edit
    edit.model                                          # answers with the edit
    edit.restore()                                      # the original model, weights bit-equal

and judged by the same three numbers (Yao et al., 2023, *Editing large language models: problems,
methods, and opportunities*; the CounterFact/zsRE protocol of Meng et al., 2022 and Mitchell et al.,
2022), each a fraction of prompts whose greedy next token is the expected one:

- **reliability**: the edit prompt gives ``o*``;
- **generalisation**: its paraphrases give ``o*`` too (the fact world's last template was never
  seen in pretraining);
- **locality**: prompts about other subjects keep their true object.

:func:`sequential_edits` applies requests batch after batch, as a deployed model is edited over
time, and adds **retention**: the share of earlier edits that still hold.

Chapters: notebooks/16_editing_memory.ipynb (the scores, memory-based editors) and
notebooks/17_editing_constrained.ipynb (constrained tuning).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .. import checks
from ..data.facts import EditRequest
from ..hooks import get_module, linear_weight, set_module
from ..lm import next_token_hits

__all__ = ["EditRequest", "EditScores", "Edit", "Editor", "ModelSnapshot", "check_requests",
           "evaluate_edits", "sequential_edits", "subject_last_token", "block_output", "frozen",
           "edited_forward", "layer_list", "apply_updates", "save_editor", "load_editor"]


@dataclass(frozen=True)
class EditScores:
    """The three scores of :func:`evaluate_edits` (fractions in [0, 1], averaged over requests), the
    number of requests they cover and, from :func:`sequential_edits`, ``retention``: the reliability of
    the requests edited *before* the last batch (``None`` after the first batch)."""

    reliability: float
    generalisation: float
    locality: float
    n_edits: int
    retention: float | None = None

    def row(self) -> list[float]:
        """``[reliability, generalisation, locality]``: one row per seed for ``book.seed_table``."""
        return [self.reliability, self.generalisation, self.locality]


class ModelSnapshot:
    """What an editor must be able to give back: the values of the parameters it will change (cloned),
    every parameter's ``requires_grad`` flag and ``.grad``, every module's ``training`` flag, and the
    module objects it will replace. :meth:`restore` puts all of it back, so the caller's model is bit-equal to before.

    >>> snap = ModelSnapshot(model, parameters=["transformer.h.1.mlp.c_proj.weight"])
    >>> ...  # change that weight, swap modules with snap.replace_module(name, new)
    >>> snap.restore()
    """

    def __init__(self, model: nn.Module, parameters: Sequence[str] = ()):
        self.model = checks.module(model)
        named = dict(model.named_parameters())
        missing = [n for n in parameters if n not in named]
        if missing:
            raise ValueError(f"{type(model).__name__} has no parameters {missing}; see model.named_parameters()")
        self._values = {n: named[n].detach().clone() for n in parameters}
        self._requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self._grads = [(p, p.grad) for p in model.parameters()]  # training leaves .grad behind
        self._training = [(m, m.training) for m in model.modules()]
        self._modules: list[tuple[str, nn.Module]] = []

    def replace_module(self, name: str, module: nn.Module) -> nn.Module:
        """Put ``module`` where ``name`` is (the original is kept for :meth:`restore`); returns it."""
        self._modules.append((name, get_module(self.model, name)))
        set_module(self.model, name, module)
        return module

    @torch.no_grad()
    def restore(self) -> nn.Module:
        for name, original in reversed(self._modules):
            set_module(self.model, name, original)
        named = dict(self.model.named_parameters())
        for name, value in self._values.items():
            named[name].copy_(value)
        return self.restore_flags()

    def restore_flags(self) -> nn.Module:
        """Give back only the ``requires_grad`` and ``training`` flags and the ``.grad`` each parameter
        had: for an editor that froze the model to train its own parameters and keeps its change
        (values and modules stay)."""
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)
        for p, grad in self._grads:
            p.grad = grad
        for m, flag in self._training:
            m.training = flag
        return self.model


class Edit:
    """An applied edit: ``model`` answers with it, :meth:`restore` gives back the original model
    (bit-equal weights; for an editor that wraps the model, the original object), once.

    Also a context manager, for a look at the edited model that cannot forget to undo it:

    >>> with editor.edit(model, tok, requests) as edited:
    ...     lm.complete(edited, tok, requests[0].prompt)
    """

    def __init__(self, model: nn.Module, undo: Callable[[], nn.Module], editor: str = "",
                 requests: Sequence[EditRequest] = ()):
        self.model = checks.module(model)
        if not callable(undo):
            raise TypeError(f"undo must be a function that returns the original model, got {type(undo).__name__}")
        self._undo = undo
        self.editor = editor
        self.requests = tuple(requests)
        self.restored = False

    def restore(self) -> nn.Module:
        """Undo the edit and return the original model."""
        if self.restored:
            raise ValueError(f"this {self.editor or 'edit'} was already restored; the model it returned then "
                             "is the original")
        model = self._undo()
        self.restored = True
        return model

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc) -> None:
        if not self.restored:
            self.restore()

    def __repr__(self) -> str:
        state = "restored" if self.restored else "applied"
        return f"Edit({self.editor or 'editor'}, {len(self.requests)} requests, {state})"


@runtime_checkable
class Editor(Protocol):
    """Every editor: a ``name``, the ``paper`` it implements, and ``edit(model, tokenizer, requests)``.
    ``max_requests`` (``None``: any number) is how many requests one call may carry."""

    name: str
    paper: str

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit: ...


def check_requests(requests, tokenizer, max_requests: int | None = None, editor: str = "this editor"
                   ) -> list[EditRequest]:
    """``requests`` as a non-empty list of :class:`EditRequest` that ``tokenizer`` can read: each target
    one token after a space, and no word of a prompt unknown to a tokenizer that has an unknown token
    (a request written for another world's vocabulary). At most ``max_requests`` of them."""
    if isinstance(requests, EditRequest):
        requests = [requests]
    requests = checks.non_empty(requests, "requests")
    wrong = [type(r).__name__ for r in requests if not isinstance(r, EditRequest)]
    if wrong:
        raise TypeError(f"requests must be EditRequest objects (FactWorld.edit_requests makes them), got "
                        f"{sorted(set(wrong))}")
    if max_requests is not None and len(requests) > max_requests:
        raise ValueError(f"{editor} edits at most {max_requests} request(s) per call, got {len(requests)}; "
                         "split them into batches (sequential_edits(..., batch_size=...))")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        for r in requests:
            texts = [r.prompt, *r.paraphrases, *(p for p, _ in r.neighbours)]
            unknown = sorted({w for t in texts for w in t.split()
                              if unk in tokenizer(w, add_special_tokens=False)["input_ids"]})
            if unknown:
                raise ValueError(f"the request about {r.subject!r} has words the tokenizer does not know: "
                                 f"{unknown[:8]}; was it made for another tokenizer's vocabulary?")
    from ..lm import target_ids  # raises a ValueError naming the targets that are not one token

    target_ids(tokenizer, [t for r in requests for t in (r.target_true, r.target_new)])
    return requests


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every parameter of ``model`` has ``requires_grad=False``; after it each has
    its flag and its ``.grad`` back: for an optimisation of something else through the model
    (ROME's ``delta``, MEND's and KnowledgeEditor's networks, integrated gradients)."""
    snapshot = ModelSnapshot(model)
    model.requires_grad_(False)
    try:
        yield model
    finally:
        snapshot.restore_flags()


def edited_forward(model: nn.Module, updates: dict[str, torch.Tensor], batch: dict):
    """``model(**batch)`` with each named linear layer's weight ``W`` replaced by ``W + update``
    (``update`` as ``(d_out, d_in)``, transposed for Conv1D), differentiably and without touching the
    model: the edited model a meta-learned editor is trained through."""
    from torch.func import functional_call

    from ..hooks import is_conv1d

    params = {}
    for name, update in updates.items():
        module = get_module(model, name)
        params[name + ".weight"] = module.weight + (update.T if is_conv1d(module) else update)
    return functional_call(model, params, args=(), kwargs=batch)


def apply_updates(model: nn.Module, updates: dict[str, torch.Tensor], editor: str,
                  requests: Sequence[EditRequest]) -> Edit:
    """Add each ``update`` (``(d_out, d_in)``, transposed for Conv1D) to its named linear layer's
    weight, in place, and return the :class:`Edit` that takes them back: what MEND, KnowledgeEditor
    and any other "compute a weight change, then write it" editor end with."""
    snapshot = ModelSnapshot(model, parameters=[n + ".weight" for n in updates])
    with torch.no_grad():
        for name, update in updates.items():
            linear_weight(get_module(model, name)).add_(update.detach())  # W <- W + update
    return Edit(model, snapshot.restore, editor, list(requests))


def save_editor(editor, folder) -> Path:
    """Write a meta-trained editor (MEND, KnowledgeEditor) to ``folder``: ``editor.json`` (its class
    and constructor arguments) and ``editor.safetensors`` (every tensor meta-training learnt).
    :func:`load_editor` reads it back; the zoo keeps the book's editors this way."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in editor.parameters().items()}
    save_file(tensors, folder / "editor.safetensors")
    (folder / "editor.json").write_text(json.dumps({"class": type(editor).__name__,
                                                    "config": editor.config()}, indent=1))
    return folder


def load_editor(folder, model: nn.Module):
    """The editor :func:`save_editor` wrote to ``folder``, its networks built for ``model`` (which
    must have the layer shapes it was meta-trained on) and on ``model``'s device."""
    from safetensors.torch import load_file

    from .knowledge_editor import KnowledgeEditor
    from .mend import Mend

    folder = Path(folder)
    if not (folder / "editor.json").exists():
        raise ValueError(f"expected a folder written by save_editor (with editor.json), got {folder}")
    record = json.loads((folder / "editor.json").read_text())
    classes = {cls.__name__: cls for cls in (Mend, KnowledgeEditor)}
    if record["class"] not in classes:
        raise ValueError(f"load_editor reads {sorted(classes)}, got a saved {record['class']!r}")
    editor = classes[record["class"]](**record["config"])
    editor._build(model)
    params, saved = editor.parameters(), load_file(folder / "editor.safetensors")
    if set(params) != set(saved) or any(params[k].shape != saved[k].shape for k in saved):
        raise ValueError(f"the editor in {folder} was meta-trained for other layer shapes than "
                         f"{type(model).__name__}'s")
    with torch.no_grad():
        for k, v in saved.items():
            params[k].copy_(v)
    return editor


def layer_list(layers) -> list[int]:
    """``layers`` as a list of block indices (a TypeError for one int or an empty list), for the
    editors that change several layers."""
    if isinstance(layers, (int, str)) or not hasattr(layers, "__len__") or not len(layers):
        raise TypeError(f"layers must be a non-empty list of block indices, got {layers!r}")
    return [checks.integer(layer, "layer") for layer in layers]


def subject_last_token(tokenizer, prompt: str, subject: str) -> int:
    """The position of ``subject``'s last token in ``tokenizer(prompt)`` (specials included): where
    causal tracing finds facts recalled and where ROME, MEMIT and knowledge neurons read and write.
    Found by tokenising the prompt up to the subject's end, so it holds for word-level and BPE
    tokenizers alike (a subject followed by a space ends on a token boundary in both)."""
    for name, value in (("prompt", prompt), ("subject", subject)):
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"{name} must be a non-empty string, got {type(value).__name__} ({value!r:.60})")
    end = prompt.find(subject)
    if end < 0:
        raise ValueError(f"subject {subject!r} is not found in the prompt {prompt!r}")
    end += len(subject)
    head = tokenizer(prompt[:end])["input_ids"]
    if tokenizer(prompt)["input_ids"][:len(head)] != head:
        raise ValueError(f"the tokenizer splits {prompt!r} across the end of {subject!r}; the subject "
                         "must end on a token boundary")
    return len(head) - 1


def block_output(output, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply ``fn`` to the hidden states a GPT-2 block (or its attention) returns: a tensor in
    transformers 5, a tuple whose first element is the hidden states in earlier versions and for
    attention. For :func:`lfm_ref.hooks.patch_outputs` on a block."""
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


def hidden_of(output) -> torch.Tensor:
    """The hidden states in what a block or its attention returns (see :func:`block_output`)."""
    return output[0] if isinstance(output, tuple) else output


def _request_hits(model, tokenizer, requests: Sequence[EditRequest]) -> list[tuple[float, float, float]]:
    """Per request: (reliability, generalisation, locality), from one batched pass over every prompt."""
    prompts, targets, owners = [], [], []
    for i, r in enumerate(requests):
        groups = [([r.prompt], r.target_new, 0), (r.paraphrases, r.target_new, 1)]
        for prompt_list, target, g in groups:
            for p in prompt_list:
                prompts.append(p), targets.append(target), owners.append((i, g))
        for p, obj in r.neighbours:
            prompts.append(p), targets.append(obj), owners.append((i, 2))
    hits = next_token_hits(model, tokenizer, prompts, targets).tolist()
    sums = [[[0, 0] for _ in range(3)] for _ in requests]  # per request, per group: [hits, count]
    for (i, g), h in zip(owners, hits):
        sums[i][g][0] += h
        sums[i][g][1] += 1
    nan = float("nan")
    return [tuple(h / n if n else nan for h, n in groups) for groups in sums]


def _mean(values) -> float:
    values = [v for v in values if v == v]  # requests without paraphrases or neighbours do not count
    return sum(values) / len(values) if values else float("nan")


def evaluate_edits(model: nn.Module, tokenizer,
                   requests: Sequence[EditRequest]) -> EditScores:
    """Reliability, generalisation and locality of ``model`` on ``requests`` (see the
    module's docstring): each the mean over requests of the fraction of that request's
    prompts whose greedy next token is right, as EasyEdit averages them. On the unedited
    model reliability is near 0 (it still says ``target_true``) and locality is its
    recall of the neighbours' facts."""
    checks.module(model)
    requests = check_requests(requests, tokenizer)
    per_request = _request_hits(model, tokenizer, requests)
    reliability, generalisation, locality = (_mean(col) for col in zip(*per_request))
    return EditScores(reliability, generalisation, locality, n_edits=len(requests))


def sequential_edits(editor: Editor, model: nn.Module, tokenizer, requests: Sequence[EditRequest],
                     batch_size: int = 1, record_at: Sequence[int] | None = None) -> list[EditScores]:
    """Apply ``requests`` ``batch_size`` at a time, each edit on the model the previous one returned,
    and score the model after each batch (or only once ``record_at`` requests have been edited).

    Each :class:`EditScores` covers **every request edited so far** (so the last one is the state after
    all of them), and ``retention`` is the reliability of those edited before the last batch. The
    caller's model is restored at the end, bit-equal, whatever happens.
    """
    if not isinstance(editor, Editor):
        raise TypeError(f"editor must have name, paper and edit(model, tokenizer, requests), got "
                        f"{type(editor).__name__}")
    checks.module(model)
    requests = check_requests(requests, tokenizer)
    batch_size = checks.int_between(batch_size, "batch_size", 1, len(requests), "the number of requests")
    n_batches = -(-len(requests) // batch_size)
    ends = [min((b + 1) * batch_size, len(requests)) for b in range(n_batches)]
    record = set(ends) if record_at is None else set(record_at)
    unknown = sorted(record - set(ends))
    if unknown:
        raise ValueError(f"record_at must name counts reached after a batch ({ends[:6]}...), got {unknown}")
    edits, scores, current = [], [], model
    try:
        for start, end in zip([0, *ends[:-1]], ends):
            edit = editor.edit(current, tokenizer, requests[start:end])
            edits.append(edit)
            current = edit.model
            if end in record:
                per_request = _request_hits(current, tokenizer, requests[:end])
                reliability, generalisation, locality = (_mean(col) for col in zip(*per_request))
                retention = _mean([r for r, _, _ in per_request[:start]]) if start else None
                scores.append(EditScores(reliability, generalisation, locality, end, retention))
    finally:
        for edit in reversed(edits):
            edit.restore()
    return scores

