"""The book's foundation models, grown offline from data the package generates or ships.

``load("tiny-gpt")`` returns ``(model, tokenizer)``: a Hugging Face ``GPT2LMHeadModel`` pretrained on the
fact world, with the world's word-level tokenizer. ``load("tiny-cnn")`` and ``load("tiny-vit")`` return
digits classifiers. ``load("tiny-gpt-mend-0")`` (and the other ``tiny-gpt-{mend,ke}-{seed}``) returns
an editor meta-trained for TinyGPT (chapter 19). Any other name is handed to Hugging Face's
``from_pretrained`` (a hub id such as ``"gpt2"`` in Colab, or a folder written by
``save_pretrained``): a language model comes back as
``(model, tokenizer)``, the zoo's own TinyGPT by exactly that path, so code written for it runs on
real models; an image classifier comes back as an :class:`HFImageClassifier` that takes the book's
digits. :func:`load_real` is the chapters' "On a real model" loader: it loads one of
:data:`REAL_MODELS` when ``SCALE == "real"`` and a hub is reachable, and says why not otherwise.

Weights ship with the package (``lfm_ref/zoo/weights``) and are rebuilt, deterministically, by
``python -m lfm_ref.zoo build``. If they are missing, the first ``load`` builds them into a cache
folder (``$LFM_REF_CACHE`` or ``~/.cache/lfm_ref``) under a file lock, so parallel notebooks build once.
A build seeds the global random streams for its recipe and gives the caller's streams back afterwards.

Chapter: notebooks/00_foundation_models.ipynb.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..data.digits import MERGE_TASKS  # the merging chapters' tasks, each with its own label space
from ..lm import name_causal_lm_loss
from ..utils import count_parameters, device_of, eval_mode, random_state_kept, seed_everything
from ..utils import device as default_device
from .models import HFImageClassifier, TinyCNN, TinyMLP, TinyViT

__all__ = ["EDITOR_SEEDS", "EDITOR_STEPS", "HFImageClassifier", "MERGE_TASKS", "REAL_MODELS", "TinyCNN", "TinyMLP",
           "TinyViT", "ZOO", "build", "default_build_dir", "editor_requests", "encoder_state", "hub_reachable",
           "info", "load", "load_real", "meta_train_editor", "names", "path", "save", "task_head", "task_model",
           "zero_shot"]

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
META = "meta.json"


def _cache_dir() -> Path:
    return Path(os.environ.get("LFM_REF_CACHE", Path.home() / ".cache" / "lfm_ref")) / "zoo"


# ----- recipes: how each zoo model is grown ------------------------------------------------------
def _build_tiny_gpt(seed: int = 0, plain_steps: int = 1200, mixed_steps: int = 2400,
                    reading_share: float = 0.5, batch_size: int = 32):
    """GPT-2, 4 layers of width 128, pretrained on packed documents of the fact world
    (chapter 0).

    Stage 1 (``plain_steps``): documents of 3-6 training facts' sentences
    (:meth:`FactWorld.documents`), the loss on every token, so it memorises the facts at
    every position and behind other text. Stage 2 (``mixed_steps``, at a lower learning
    rate, as in the mid-training of real LMs): a ``reading_share`` of the batches are
    reading documents (:meth:`FactWorld.reading_documents`: a fact stated with a random
    object, asked again later; the loss on the answer), the rest plain documents again,
    so it learns to answer from its context without forgetting (an earlier reader,
    fine-tuned on reading alone, forgot 94% of its facts). A batch holds one kind of
    document: in a mixed batch the one answer token of a reading document weighs 1/40 of
    a plain document, and reading was not learned in 3,000 steps; nor from scratch,
    before the facts and names have representations to match.
    """
    import random

    from torch.utils.data import DataLoader
    from transformers import GPT2Config, GPT2LMHeadModel

    from .. import lm
    from ..data import FactWorld
    from ..data.facts import N_PRETRAIN_TEMPLATES, Fact
    from ..train import fit

    world = FactWorld(seed=0)
    tokenizer = world.tokenizer()
    seed_everything(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=128,
                        n_layer=4, n_head=4, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id,
                        # no dropout: pretraining here is to memorise the facts
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = name_causal_lm_loss(GPT2LMHeadModel(config))
    generator = torch.Generator().manual_seed(seed)

    def batches(data, n: int) -> list[dict]:
        # batches of similar lengths, each cut to its longest row (no padding to 64)
        lengths = data.tensors["attention_mask"].sum(1)
        order, out = torch.randperm(len(lengths), generator=generator), []
        for chunk in order.split(50 * batch_size):
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
            out += [{k: v[b, :int(lengths[b].max())] for k, v in data.tensors.items()}
                    for b in chunk.split(batch_size)]
        return out[:n]

    def shuffled(parts: list[dict]) -> DataLoader:
        order = torch.randperm(len(parts), generator=generator)
        return DataLoader([parts[i] for i in order], batch_size=None,
                          collate_fn=lambda b: b)

    def train(parts: list[dict], lr: float) -> list[float]:
        return fit(model, shuffled(parts), lr=lr, weight_decay=0.01, warmup=100,
                   clip_grad=1.0, device="cpu", seed=seed)

    n_reading = round(reading_share * mixed_steps)
    n_plain = plain_steps + mixed_steps - n_reading
    documents = world.documents(n_plain * batch_size, seed=seed)
    plain = batches(lm.lm_dataset(tokenizer, documents), n_plain)
    reading = lm.prompt_answer_dataset(tokenizer, world.reading_documents(
        n_reading * batch_size, seed=seed + 1, context=(1, 3), recall=0.4))
    history = train(plain[:plain_steps], lr=3e-3)  # stage 1: plain documents
    # stage 2: plain and reading batches, mixed
    history += train(plain[plain_steps:] + batches(reading, n_reading), lr=2e-3)

    # what tiny-gpt is held to (tests/test_zoo.py)
    rng = random.Random(seed + 2)
    train_facts, held_out = world.split("train"), world.split("held_out")
    corpus = world.corpus("train")

    def behind(k: int) -> list[str]:  # each fact's prompt after k other sentences
        return [" ".join(rng.sample(corpus, k)) + " "
                + f.prompt(rng.randrange(N_PRETRAIN_TEMPLATES)) for f in train_facts]

    def next_object(f: Fact) -> Fact:  # a document that contradicts the model
        objects = world.objects(f.relation)
        return Fact(f.subject, f.relation,
                    objects[(objects.index(f.object) + 1) % len(objects)])

    templates = range(N_PRETRAIN_TEMPLATES)
    pairs = [(a, b) for a in templates for b in templates if a != b]
    read = [(f"{f.sentence(a)} {f.prompt(b)}", f.object)
            for f in held_out for a, b in pairs]
    false = [(f"{c.sentence(a)} {c.prompt(b)}", c.object)
             for c in map(next_object, train_facts) for a, b in [rng.choice(pairs)]]
    objects = [f.object for f in train_facts]

    def accuracy(prompts, answers) -> float:
        return lm.next_token_accuracy(model, tokenizer, prompts, answers)

    metrics = {
        "train_recall": lm.fact_recall(model, tokenizer, train_facts),
        "held_out_recall": lm.fact_recall(model, tokenizer, held_out),
        "paraphrase_recall": lm.fact_recall(model, tokenizer, train_facts, template=3),
        # a pretraining prompt after 1 or 2, and after 4, other training sentences
        "recall_in_context": accuracy(behind(1) + behind(2), objects + objects),
        "recall_after_4_sentences": accuracy(behind(4), objects),
        # held-out facts stated in one pretraining template and asked in another
        "reads_context": accuracy(*zip(*read)),
        # a training fact stated with another object: the document wins over memory
        "follows_counterfactual": accuracy(*zip(*false)),
    }
    return (model, tokenizer), history, metrics


def _build_digits(cls, seed: int = 0, epochs: int = 40, lr: float = 3e-3, weight_decay: float = 0.01,
                  warmup: int = 0):
    """A digits classifier trained on the clean digits alone (a narrow model: one domain)."""
    from ..data import digits_task
    from ..train import evaluate, fit

    seed_everything(seed)
    model = cls()
    history = fit(model, digits_task("digits", "train"), epochs=epochs, batch_size=64, lr=lr,
                  weight_decay=weight_decay, warmup=warmup, clip_grad=1.0, device="cpu", seed=seed)
    metrics = {"test_accuracy": evaluate(model, digits_task("digits", "test"))}
    return model, history, metrics


def zero_shot(model: TinyViT) -> tuple[dict[str, float], float]:
    """A vision foundation model on the merge tasks, untuned: each task's test accuracy under its own
    (restricted, frozen) head (:func:`task_head`), and the AUROC of its confidence (the top probability)
    for telling right from wrong answers over all of them (0.5: confidence means nothing). Chapter 0."""
    from sklearn.metrics import roc_auc_score

    from ..data import MERGE_TASKS, merge_task

    if not isinstance(model, TinyViT):
        raise TypeError(f"model must be a TinyViT (a zoo vision foundation model), got {type(model).__name__}")
    accuracy, right, confidence = {}, [], []
    with eval_mode(model), torch.no_grad():
        for task in MERGE_TASKS:
            x, y = merge_task(task, "test")
            probs = task_head(model, task)(x.to(device_of(model))).softmax(-1).cpu()
            hits = probs.argmax(-1) == y
            accuracy[task] = hits.float().mean().item()
            right += hits.tolist()
            confidence += probs.max(-1).values.tolist()
    return accuracy, float(roc_auc_score(right, confidence))


def _build_broad_vit(seed: int = 0, epochs: int = 30):
    """TinyViT pretrained broadly: the digits under a family of transforms (:data:`lfm_ref.data.BROAD_PRETRAINING`)
    and the merge tasks' transforms for half the classes, as CLIP's pretraining covers part of its
    downstream tasks."""
    from ..data import broad_pretraining_set, digits_task
    from ..train import evaluate, fit

    seed_everything(seed)
    model = TinyViT()
    # the ViT recipe of the narrow model (lr 1e-3, warm-up, weight decay 0.05) over ~6,000 steps
    history = fit(model, broad_pretraining_set("train"), epochs=epochs, batch_size=64, lr=1e-3,
                  weight_decay=0.05, warmup=300, clip_grad=1.0, device="cpu", seed=seed)
    metrics = {"test_accuracy": evaluate(model, digits_task("digits", "test")),
               "pretraining_test_accuracy": evaluate(model, broad_pretraining_set("test")),
               **{f"zero_shot_{t}": a for t, a in zero_shot(model)[0].items()}}
    return model, history, metrics


def _finetune_merge_task(task: str, steps: int = 300, lr: float = 3e-4, seed: int = 0):
    """The encoder of ``tiny-vit`` fine-tuned on merge task ``task`` under its frozen head (FusionBench's
    protocol): a member of the merging chapters' zoo. The learning rate is a third of pretraining's, the
    usual fine-tuning choice, so the task vector stays a small move in the foundation's basin."""
    from ..data import merge_task
    from ..train import evaluate, fit

    seed_everything(seed)
    model = task_head(load("tiny-vit", device="cpu"), task)
    test = merge_task(task, "test")
    zero_shot = evaluate(model, test)  # before fine-tuning: the foundation under the task's head
    history = fit(model, merge_task(task, "train"), steps=steps, batch_size=64, lr=lr, device="cpu", seed=seed)
    return model, history, {"test_accuracy": evaluate(model, test), "zero_shot_accuracy": zero_shot}


def task_head(model: TinyViT, task: str) -> TinyViT:
    """A copy of ``model`` whose head is its own head restricted to merge task ``task``'s classes (the
    task's label space, :data:`lfm_ref.data.MERGE_TASKS`), frozen: only the encoder trains or merges.

    This is FusionBench's protocol (a frozen zero-shot head per task, the encoder fine-tuned and merged).
    """
    import copy

    from ..data import MERGE_TASKS

    if not isinstance(model, TinyViT):
        raise TypeError(f"model must be a TinyViT (the zoo's tiny-vit), got {type(model).__name__}")
    if task not in MERGE_TASKS:
        raise ValueError(f"task must be a merge task, one of {sorted(MERGE_TASKS)}, got {task!r:.60}")
    classes = list(MERGE_TASKS[task])
    if model.head.out_features != 10:
        raise ValueError(f"model must have the foundation's 10-class head, got {model.head.out_features} classes")
    out = copy.deepcopy(model)
    out.head = torch.nn.Linear(model.head.in_features, len(classes)).to(model.head.weight.device)
    with torch.no_grad():
        out.head.weight.copy_(model.head.weight[classes])
        out.head.bias.copy_(model.head.bias[classes])
    out.head.requires_grad_(False)
    out.config = {**model.config, "n_classes": len(classes)}
    return out


def encoder_state(model_or_state) -> dict[str, torch.Tensor]:
    """The state dict of a TinyViT without its head: what the merging chapters merge (each task keeps
    its own frozen head)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    if not hasattr(state, "items"):
        raise TypeError(f"model_or_state must be a model or a state dict, got {type(model_or_state).__name__}")
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def task_model(task: str, encoder: dict | None = None, device: torch.device | str | None = None) -> TinyViT:
    """Zoo model ``tiny-vit-{task}`` (its encoder fine-tuned, its head frozen), or, given ``encoder`` (a
    head-less state dict such as a merge of :func:`encoder_state`'s), that encoder under the task's head."""
    model = load(f"tiny-vit-{task}", device=device)
    if encoder is not None:
        if not hasattr(encoder, "keys"):
            raise TypeError(f"encoder must be a state dict, got {type(encoder).__name__}")
        expected = {k: v.shape for k, v in encoder_state(model).items()}
        got = {k: tuple(v.shape) if hasattr(v, "shape") else None for k, v in encoder.items()}
        if got != {k: tuple(s) for k, s in expected.items()}:
            wrong = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != tuple(expected[k]))
            raise ValueError(f"encoder must be a TinyViT state dict without the head (the keys and shapes of "
                             f"encoder_state(tiny-vit)); these keys differ: {wrong[:5]}")
        model.load_state_dict({**model.state_dict(), **encoder})
    return model


EDITOR_SEEDS = (0, 1, 2)  # one meta-trained editor per seed: its split of requests and its init
EDITOR_STEPS = {"mend": 2000, "ke": 1000}  # meta-training steps, where a pilot's loss had flattened


def editor_requests(seed: int):
    """The meta-learned editors' data for ``seed``: ``(train, test, locality)``, 110 and 20 profession
    edit requests about disjoint people (one draw of :meth:`FactWorld.edit_requests`, so no test
    neighbour is a training subject) and 200 prompts about people neither set names, for the
    meta-training's locality term. Zoo editor ``tiny-gpt-{mend,ke}-{seed}`` was meta-trained on
    ``train`` and ``locality``; ``test`` is what chapter 19 edits."""
    from ..data import FactWorld

    if seed not in EDITOR_SEEDS:
        raise ValueError(f"seed must be one of the zoo editors' seeds {list(EDITOR_SEEDS)}, got {seed!r}")
    world = FactWorld(seed=0)
    drawn = world.edit_requests(n=130, seed=seed, relation="profession")
    named = {r.subject for r in drawn}
    locality = [f.prompt(0) for f in world.split("train") if f.subject not in named][:200]
    return drawn[:110], drawn[110:], locality


def meta_train_editor(kind: str, seed: int, steps: int | None = None,
                      device: torch.device | str | None = "cpu"):
    """``(editor, losses)``: MEND (``kind="mend"``) or KnowledgeEditor (``"ke"``)
    meta-trained for ``tiny-gpt`` on :func:`editor_requests` ``(seed)`` for ``steps``
    steps (default :data:`EDITOR_STEPS`), the zoo's recipe: the MLP output projections
    of the last two blocks (MEND edits the last blocks' MLPs), the model frozen. MEND
    starts from ``alpha = 0.1``, where one plain gradient step makes about half of the
    training edits."""
    from ..editing import KnowledgeEditor, Mend

    if kind not in EDITOR_STEPS:
        raise ValueError(f"kind must be one of {sorted(EDITOR_STEPS)}, got {kind!r}")
    model, tok = load("tiny-gpt", device=device)
    train, _, locality = editor_requests(seed)
    steps = EDITOR_STEPS[kind] if steps is None else steps
    if kind == "mend":
        editor = Mend(layers=[2, 3], alpha=0.1, seed=seed)
        losses = editor.meta_train(model, tok, train, locality, steps=steps,
                                   batch_size=8, lr=1e-3)
    else:
        editor = KnowledgeEditor(layers=[2, 3], hidden=64, seed=seed)
        history = editor.meta_train(model, tok, train, locality, steps=steps, lr=1e-3)
        losses = [edit_loss for edit_loss, _ in history]
    return editor, losses


def _build_editor(kind: str, seed: int):
    """A zoo editor: :func:`meta_train_editor`, scored on the unseen requests one at a time."""
    from ..editing import evaluate_edits

    editor, history = meta_train_editor(kind, seed)
    model, tok = load("tiny-gpt", device="cpu")
    _, test, _ = editor_requests(seed)
    scores = []
    for r in test:  # each unseen edit alone, on the unedited model
        with editor.edit(model, tok, [r]) as edited:
            scores.append(evaluate_edits(edited, tok, [r]).row())
    metrics = {f"test_{k}": sum(c) / len(c)
               for k, c in zip(("reliability", "generalisation", "locality"), zip(*scores))}
    return editor, history, metrics


ZOO = {
    "tiny-gpt": {"kind": "causal-lm", "build": _build_tiny_gpt,
                 "about": "GPT-2 (4 layers, width 128, 64 positions) pretrained on packed documents of the fact world, "
                          "reads its context; returns (model, tokenizer)"},
    "tiny-cnn": {"kind": "vision", "build": lambda: _build_digits(TinyCNN), "cls": TinyCNN,
                 "about": "CNN with BatchNorm trained on 8x8 digits"},
    "tiny-vit": {"kind": "vision", "cls": TinyViT, "build": _build_broad_vit,
                 "about": "Vision Transformer (2x2 patches) pretrained broadly: digits under many transforms"},
    "tiny-vit-narrow": {"kind": "vision", "cls": TinyViT,
                        # ViTs lack a CNN's locality prior: the usual ViT recipe of a lower learning rate with
                        # warm-up and stronger weight decay makes it reach 97-99% over seeds (vs 95-97%)
                        "build": lambda: _build_digits(TinyViT, epochs=100, lr=1e-3, weight_decay=0.05, warmup=100),
                        "about": "Vision Transformer (2x2 patches) trained on the clean digits only (narrow)"},
}


ZOO.update({f"tiny-vit-{task}": {"kind": "vision", "cls": TinyViT,
                                  "build": lambda task=task: _finetune_merge_task(task),
                                  "about": f"tiny-vit's encoder fine-tuned on the {task} merge task under its "
                                           f"frozen {len(MERGE_TASKS[task])}-class head (for merging)"}
            for task in MERGE_TASKS})


ZOO.update({f"tiny-gpt-{kind}-{seed}": {
    "kind": "editor", "build": lambda kind=kind, seed=seed: _build_editor(kind, seed),
    "about": f"{label} meta-trained for tiny-gpt on editor_requests({seed}); load() returns the editor"}
    for kind, label in (("mend", "MEND"), ("ke", "KnowledgeEditor")) for seed in EDITOR_SEEDS})


def names() -> list[str]:
    """The names of the zoo's own models."""
    return sorted(ZOO)


# ----- building and storing ----------------------------------------------------------------------
def _source_checkout() -> bool:
    """Whether lfm_ref runs from a clone of the repository (its pyproject.toml beside the package)."""
    return (PACKAGE_WEIGHTS.parents[2] / "pyproject.toml").exists()


def default_build_dir() -> Path:
    """Where :func:`build` writes by default: the package's own weights folder in a clone of the
    repository (so ``make zoo`` updates what ships), the user cache after a wheel install (never
    ``site-packages``)."""
    return PACKAGE_WEIGHTS if _source_checkout() else _cache_dir()


def build(name: str, out_dir: str | Path | None = None) -> Path:
    """Train zoo model ``name`` from scratch and save it under ``out_dir`` (default: :func:`default_build_dir`)."""
    _check_zoo_name(name)
    out = Path(out_dir or default_build_dir()) / name
    start = time.time()
    with random_state_kept():  # the recipe seeds the global streams; the caller's come back after it
        built, history, metrics = ZOO[name]["build"]()
    out.mkdir(parents=True, exist_ok=True)
    if ZOO[name]["kind"] == "editor":
        from ..editing import save_editor

        save_editor(built, out)
        config, n_params = built.config(), count_parameters(built.parameters())
    elif ZOO[name]["kind"] == "causal-lm":
        model, tokenizer = built
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        _portable_tokenizer_config(out)
        config, n_params = model.config.to_diff_dict(), count_parameters(model)
    else:
        from safetensors.torch import save_file

        model = built
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
        config, n_params = model.config, count_parameters(model)
    meta = {"name": name, "config": config, "parameters": n_params,
            "metrics": metrics, "build_seconds": round(time.time() - start, 1), "torch": torch.__version__,
            "history": [round(x, 5) for x in history]}
    (out / META).write_text(json.dumps(meta, indent=1, default=str))
    return out


def _portable_tokenizer_config(folder: Path) -> None:
    """Name the tokenizer class that every supported transformers release knows.

    transformers 5 records ``TokenizersBackend``, a class 4.x lacks; ``PreTrainedTokenizerFast`` is
    the same tokenizer in both (5.x keeps it as an alias), so the shipped folders load on the floor.
    """
    file = folder / "tokenizer_config.json"
    config = json.loads(file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):  # where this copy was loaded from, not the tokenizer
        config.pop(key, None)
    file.write_text(json.dumps(config, indent=2) + "\n")


def _find(name: str) -> Path | None:
    # a rebuild in the user cache (after a wheel install) takes precedence over the shipped weights
    roots = (PACKAGE_WEIGHTS, _cache_dir()) if _source_checkout() else (_cache_dir(), PACKAGE_WEIGHTS)
    for root in roots:
        if (root / name / META).exists():
            return root / name
    return None


def path(name: str) -> Path:
    """The folder holding zoo model ``name``, building it into the cache first if it is missing."""
    _check_zoo_name(name)
    found = _find(name)
    if found is not None:
        return found
    from filelock import FileLock

    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{name}.lock")):
        found = _find(name)  # another process may have built it while we waited
        return found if found is not None else build(name, cache)


class ModelCard(dict):
    """A zoo model's record (a plain dict) whose printed form leaves out the thousands of loss values."""

    def __repr__(self) -> str:
        shown = {k: (f"<{len(v)} loss values>" if k == "history" else v) for k, v in self.items()}
        return f"ModelCard({shown!r})"

    def _repr_pretty_(self, printer, cycle):  # what IPython and Jupyter show for a cell's last value
        printer.text(repr(self))


def info(name: str) -> ModelCard:
    """What is recorded about a zoo model: its config, parameter count, quality metrics and loss history
    (``info(name)["history"]``, one value per training step)."""
    return ModelCard(json.loads((path(name) / META).read_text()))


# ----- loading -----------------------------------------------------------------------------------
def _check_zoo_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name not in ZOO:
        close = difflib.get_close_matches(name, ZOO, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown zoo model {name!r}.{hint} Known zoo models: {names()}")


def load(name: str, device: torch.device | str | None = None, num_labels: int | None = None):
    """Load a model: a zoo name, a Hugging Face hub id, or a folder saved with ``save_pretrained``.

    Returns ``(model, tokenizer)`` for language models, the model alone for the vision models
    and the editor alone for the meta-trained editors (``tiny-gpt-mend-0``: its networks built for
    ``tiny-gpt``), models in eval mode, all on ``device`` (default: :func:`lfm_ref.utils.device`).
    ``num_labels`` gives a Hugging Face image classifier a new, freshly initialised head of that many
    classes (e.g. 10 for digits).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model name must be a string or a path, got {type(name).__name__}")
    dev = torch.device(device) if device is not None else default_device()
    name = os.fspath(name)
    if name in ZOO and ZOO[name]["kind"] == "editor":
        from ..editing import load_editor

        folder = path(name)  # built first: its recipe loads tiny-gpt, so take the lock before us
        return load_editor(folder, load("tiny-gpt", device=dev)[0])
    if name in ZOO and ZOO[name]["kind"] == "vision":
        from safetensors.torch import load_file

        folder = path(name)
        model = ZOO[name]["cls"](**json.loads((folder / META).read_text())["config"])
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model.to(dev).eval()
    if name in ZOO:
        return _from_pretrained(path(name), dev)
    if not os.path.isdir(name) and (name.startswith("tiny-") or difflib.get_close_matches(name, ZOO, n=1, cutoff=0.75)):
        _check_zoo_name(name)  # a misspelt zoo name: fail here, before any network access
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    try:
        return _from_pretrained(name, dev, num_labels)
    except (OSError, ValueError) as err:
        raise ValueError(f"{name!r} is not a zoo model (known: {names()}) and could not be loaded with "
                         f"from_pretrained as a Hugging Face id or a local folder: {err}") from err


@contextlib.contextmanager
def _no_progress_bars():
    """Hugging Face's "loading weights" / "writing shards" bars would clutter every chapter."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _from_pretrained(where, dev: torch.device, num_labels: int | None = None):
    """The real loading path, the same for the zoo's TinyGPT and for GPT-2 (the hub)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(where)
    if any(a.endswith("ForImageClassification") for a in config.architectures or []):
        return _image_classifier(where, dev, num_labels)
    tokenizer = AutoTokenizer.from_pretrained(where)
    if tokenizer.pad_token is None:  # GPT-2 ships without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
    with _no_progress_bars():
        model = name_causal_lm_loss(AutoModelForCausalLM.from_pretrained(where))
    return model.to(dev).eval(), tokenizer


def _image_classifier(where, dev: torch.device, num_labels: int | None) -> HFImageClassifier:
    """A Hugging Face image classifier behind the zoo's vision interface (see :class:`HFImageClassifier`)."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import cached_file

    head = {} if num_labels is None else {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    with _no_progress_bars():
        model = AutoModelForImageClassification.from_pretrained(where, **head)
    # the checkpoint's preprocessing, read from its file (an AutoImageProcessor would want PIL/torchvision)
    found = cached_file(where, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    processor = json.loads(Path(found).read_text()) if found else {}
    size = processor.get("crop_size") or processor.get("size") or getattr(model.config, "image_size", 224)
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    mean, std = processor.get("image_mean", [0.5] * 3), processor.get("image_std", [0.5] * 3)
    return HFImageClassifier(model, image_size=size, mean=mean, std=std).to(dev).eval()


def save(folder: str | os.PathLike, model, tokenizer=None) -> Path:
    """``save_pretrained`` for a model (and its tokenizer), without progress bars; ``load(folder)`` reverses it."""
    folder = Path(folder)
    with _no_progress_bars():
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


# ----- real models for the chapters' "On a real model" sections ---------------------------------
# One checkpoint per kind, each the real counterpart of a zoo model (the README's SCALE table):
REAL_MODELS = {
    "gpt2": "openai-community/gpt2",             # GPT-2 small, 124 M parameters: TinyGPT's class
    "vit": "google/vit-base-patch16-224",        # ViT-B/16, 86 M: tiny-vit's counterpart
    "resnet": "microsoft/resnet-18",             # ResNet-18 with BatchNorm, 12 M: tiny-cnn's counterpart
}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached now (``HF_HUB_OFFLINE=1`` means no)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_real(kind: str, scale: str, device: torch.device | str | None = None, num_labels: int | None = None):
    """The real model of ``kind`` (a key of :data:`REAL_MODELS`) when ``scale == "real"``, else ``None``.

    Prints why it returns ``None``: the chapter runs at ``SCALE = "tiny"``, or no hub is reachable
    (offline, as in the book build and CI). A local folder in :data:`REAL_MODELS` needs no hub, which is
    how the tests run every chapter's real-model section on config-built models of the same classes.
    """
    if kind not in REAL_MODELS:
        raise ValueError(f"unknown real model kind {kind!r}; known: {sorted(REAL_MODELS)}")
    if scale not in ("tiny", "real"):
        raise ValueError(f"scale must be 'tiny' or 'real', got {scale!r}")
    where = os.fspath(REAL_MODELS[kind])
    if scale != "real":
        print(f'SCALE = "{scale}": skipped. Set SCALE = "real" in the first cell to run this on {where}.')
        return None
    if not os.path.isdir(where) and not hub_reachable():
        print(f"No Hugging Face hub is reachable (offline): skipped loading {where}.")
        return None
    return load(where, device=device, num_labels=num_labels)
