import json

import pytest
import torch

from lfm_ref import evaluate, lm, zoo
from lfm_ref.data import MERGE_TASKS, digits_task, merge_task


def test_names_and_info():
    editors = [f"tiny-gpt-{kind}-{seed}" for kind in ("ke", "mend") for seed in zoo.EDITOR_SEEDS]
    assert zoo.names() == ["tiny-cnn", "tiny-gpt", *editors, "tiny-vit", "tiny-vit-flip", "tiny-vit-invert",
                           "tiny-vit-narrow", "tiny-vit-rot90", "tiny-vit-shift"]
    meta = zoo.info("tiny-gpt")
    assert meta["history"] and meta["metrics"]["train_recall"] >= 0.9


def test_tiny_gpt_is_a_real_gpt2_and_knows_its_facts(tiny_gpt, world):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    model, tok = tiny_gpt
    assert isinstance(model, GPT2LMHeadModel) and isinstance(tok, PreTrainedTokenizerFast)
    assert not model.training
    train = lm.fact_recall(model, tok, world.split("train"))
    held = lm.fact_recall(model, tok, world.split("held_out"))
    assert train >= 0.90, f"tiny-gpt recalls only {train:.1%} of its pretraining facts"
    assert held <= train - 0.5, f"held-out recall {held:.1%} is not clearly below train recall {train:.1%}"
    # the numbers recorded at build time are the numbers the shipped weights give
    assert train == pytest.approx(zoo.info("tiny-gpt")["metrics"]["train_recall"], abs=1e-6)


def test_tiny_gpt_is_pretrained_on_packed_documents_that_teach_reading(world):
    """The corpus behind tiny-gpt (FactWorld.documents / reading_documents): deterministic, every training
    sentence equally often, documents that fit 64 positions, and held-out facts never told."""
    from collections import Counter

    docs = world.documents(2000, seed=0)
    assert docs == world.documents(2000, seed=0) and docs != world.documents(2000, seed=1)
    assert all(3 <= d.count(" . ") + 1 <= 6 and len(d.split()) <= 62 for d in docs)
    counts = Counter(s + " ." for d in docs for s in d[:-2].split(" . "))
    corpus = world.corpus("train")
    assert set(counts) == set(corpus) and max(counts.values()) - min(counts.values()) <= 1
    reading = world.reading_documents(3000, seed=0)
    assert all(len((p + " " + a).split()) <= 61 for p, a in reading)
    # without recall questions, the answer is always stated in the document before the question
    assert all(f" {a} ." in p for p, a in world.reading_documents(500, seed=0, recall=0.0))
    # a held-out fact is stated, and answered, with its true object no more often than chance
    told = [a == f.object for p, a in reading for f in world.split("held_out")
            if f.subject in p.split(" . ")[-1] and a in world.objects(f.relation)]
    assert told and sum(told) / len(told) < 0.15, "held-out facts are stated with their object above chance"


def test_tiny_gpt_recalls_its_facts_anywhere_in_a_document(tiny_gpt, world):
    """Packed pretraining: a fact is recalled behind other sentences as well as at position 0 (the
    sentence-per-sequence TinyGPT fell from 100% to 58% with 2 positions of shift, to 16% with 4)."""
    import random

    model, tok = tiny_gpt
    train, corpus = world.split("train"), world.corpus("train")
    rng = random.Random(0)
    for k in (1, 2, 3, 5):
        prompts = [" ".join(rng.sample(corpus, k)) + " " + f.prompt(k % 3) for f in train]
        acc = lm.next_token_accuracy(model, tok, prompts, [f.object for f in train])
        assert acc >= 0.9, f"tiny-gpt recalls only {acc:.1%} of its facts behind {k} other sentences"
    metrics = zoo.info("tiny-gpt")["metrics"]
    assert metrics["recall_in_context"] >= 0.9 and metrics["recall_after_4_sentences"] >= 0.9


def test_tiny_gpt_reads_its_context(tiny_gpt, world):
    """Held-out facts, which it was never told, are answered from a sentence in front of the question;
    a document that contradicts what it knows wins over memory."""
    from lfm_ref.data.facts import Fact

    model, tok = tiny_gpt
    held, corpus = world.split("held_out"), world.corpus("train")
    without = lm.fact_recall(model, tok, held, template=1)
    assert without <= 0.15, f"tiny-gpt knows {without:.1%} of the held-out facts it was never told"
    prompts = [f"{f.sentence(0)} {corpus[i]} {f.prompt(1)}" for i, f in enumerate(held)]
    with_doc = lm.next_token_accuracy(model, tok, prompts, [f.object for f in held])
    assert with_doc >= 0.8, f"tiny-gpt answers only {with_doc:.1%} of held-out facts from their sentence"
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    read = [(f"{f.sentence(a)} {f.prompt(b)}", f.object) for f in held for a, b in pairs]
    recorded = zoo.info("tiny-gpt")["metrics"]
    assert lm.next_token_accuracy(model, tok, *zip(*read)) == pytest.approx(recorded["reads_context"], abs=1e-6)
    assert recorded["reads_context"] >= 0.8
    assert recorded["follows_counterfactual"] >= 0.8
    # people's facts, which the reading documents contradict most often; cities' countries and countries'
    # languages are rarely contradicted there, and tiny-gpt keeps its memory of them (0% followed)
    facts = [f for f in world.split("train") if f.relation in ("born_in", "profession")]
    other = [Fact(f.subject, f.relation, next(o for o in world.objects(f.relation) if o != f.object)) for f in facts]
    follows = lm.next_token_accuracy(model, tok, [f"{c.sentence(1)} {c.prompt(0)}" for c in other],
                                     [c.object for c in other])
    assert follows >= 0.8, f"tiny-gpt follows only {follows:.1%} of documents that contradict its memory"


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-vit", "tiny-vit-narrow"])
def test_digits_models_reach_95_percent(name):
    model = zoo.load(name, device="cpu")
    assert not model.training
    acc = evaluate(model, digits_task("digits", "test"))
    assert acc >= 0.95, f"{name} reaches only {acc:.1%}"
    assert acc == pytest.approx(zoo.info(name)["metrics"]["test_accuracy"], abs=1e-6)


def test_broad_vit_transfers_partly_zero_shot_and_its_confidence_means_something():
    """The broad foundation is what CLIP is to FusionBench's tasks: partly right zero-shot on every merge
    task (FusionBench's CLIP ViT-B/32 averages about 48%), far better than the narrow model, and more
    confident where it is right (AUROC of max-probability for correctness)."""
    from sklearn.metrics import roc_auc_score

    broad, narrow = zoo.load("tiny-vit", device="cpu"), zoo.load("tiny-vit-narrow", device="cpu")
    zero_shot, auroc = zoo.zero_shot(broad)
    narrow_zero_shot, narrow_auroc = zoo.zero_shot(narrow)
    # the same accuracy as evaluate() under each task's head
    assert zero_shot == pytest.approx({t: evaluate(zoo.task_head(broad, t), merge_task(t, "test"))
                                       for t in MERGE_TASKS}, abs=1e-6)
    assert all(0.25 <= a <= 0.9 for a in zero_shot.values()), zero_shot
    assert sum(zero_shot.values()) / 4 >= sum(narrow_zero_shot.values()) / 4 + 0.15, (zero_shot, narrow_zero_shot)
    # the AUROC recomputed from the pooled confidences, by sklearn
    right, confidence = [], []
    with torch.no_grad():
        for t in MERGE_TASKS:
            x, y = merge_task(t, "test")
            probs = zoo.task_head(broad, t)(x).softmax(-1)
            right += (probs.argmax(-1) == y).tolist()
            confidence += probs.max(-1).values.tolist()
    assert auroc == pytest.approx(roc_auc_score(right, confidence), abs=1e-9)
    assert auroc >= 0.75 > narrow_auroc


def test_task_head_is_the_foundation_head_restricted_and_frozen():
    broad = zoo.load("tiny-vit", device="cpu")
    head = zoo.task_head(broad, "flip")
    x, _ = merge_task("flip", "test")
    with torch.no_grad():
        assert torch.allclose(head(x), broad(x)[:, list(MERGE_TASKS["flip"])], atol=1e-6)
    assert not any(p.requires_grad for p in head.head.parameters()) and broad.head.weight.requires_grad
    assert zoo.encoder_state(head).keys() == zoo.encoder_state(broad).keys()
    assert not any(k.startswith("head.") for k in zoo.encoder_state(broad))


@pytest.mark.parametrize("task", MERGE_TASKS)
def test_finetuned_variants_solve_their_task_under_the_frozen_head(task):
    model = zoo.load(f"tiny-vit-{task}", device="cpu")
    acc = evaluate(model, merge_task(task, "test"))
    assert acc >= 0.9 and acc == pytest.approx(zoo.info(f"tiny-vit-{task}")["metrics"]["test_accuracy"], abs=1e-6)
    pretrained = zoo.task_head(zoo.load("tiny-vit", device="cpu"), task)
    assert evaluate(pretrained, merge_task(task, "test")) <= acc - 0.1  # fine-tuning taught it something
    # the head stayed the foundation's (frozen), the encoder moved, and its keys are the foundation's
    assert all(torch.equal(model.state_dict()[k], pretrained.state_dict()[k]) for k in ("head.weight", "head.bias"))
    assert zoo.encoder_state(model).keys() == zoo.encoder_state(pretrained).keys()
    assert zoo.task_model(task, zoo.encoder_state(pretrained)).state_dict()["embed.weight"].equal(
        pretrained.embed.weight)


def test_task_model_rejects_a_state_dict_that_is_not_an_encoder():
    with pytest.raises(ValueError, match="encoder must be a TinyViT state dict"):
        zoo.task_model("rot90", {"embed.weight": torch.zeros(1)} | {"nonsense": torch.zeros(1)})
    with pytest.raises(ValueError, match="task must be a merge task"):
        zoo.task_head(zoo.load("tiny-vit", device="cpu"), "digits")
    with pytest.raises(TypeError, match="model must be a TinyViT"):
        zoo.task_head(torch.nn.Linear(2, 2), "rot90")


def test_tiny_cnn_has_batchnorm_with_running_statistics():
    model = zoo.load("tiny-cnn", device="cpu")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 and all(bn.num_batches_tracked > 0 for bn in bns)


def test_local_save_pretrained_round_trip(tiny_gpt, tmp_path, world):
    """The path Colab readers take with 'gpt2', tested on a model saved locally."""
    model, tok = tiny_gpt
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2, tok2 = zoo.load(str(tmp_path), device="cpu")
    prompts = [f.prompt() for f in world.split("train")[:16]]
    batch = lm.encode(tok, prompts)
    assert torch.equal(batch["input_ids"], lm.encode(tok2, prompts)["input_ids"])
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, model2(**batch).logits, atol=1e-6)
    assert [lm.complete(model, tok, p) for p in prompts[:4]] == [lm.complete(model2, tok2, p) for p in prompts[:4]]


def test_hf_gpt2_config_loads_through_zoo(tmp_path, tiny_gpt):
    """A GPT-2 checkpoint without a pad token (like the real 'gpt2') gets one, and generation works."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = tiny_gpt
    config = GPT2Config(vocab_size=len(tok), n_positions=16, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    model, tok2 = zoo.load(tmp_path, device="cpu")
    assert tok2.pad_token is not None
    assert isinstance(lm.complete(model, tok2, "Sara was born in", max_new_tokens=2), str)


def test_unknown_names_are_clear_errors():
    known = r"\['tiny-cnn', 'tiny-gpt', 'tiny-gpt-ke-0', "
    with pytest.raises(ValueError, match=r"Did you mean 'tiny-gpt'\?.*" + known):
        zoo.load("tiny-gtp")
    with pytest.raises(ValueError, match=r"not a zoo model \(known: \['tiny-cnn'"):
        zoo.load("no-such-org/no-such-model")
    with pytest.raises(TypeError, match="string"):
        zoo.load(3)
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.info("resnet")


def test_missing_weights_are_built_into_the_cache(tmp_path, monkeypatch):
    """With no shipped weights, the first load builds into the cache (under a lock), the next reuses it."""
    monkeypatch.setattr(zoo, "PACKAGE_WEIGHTS", tmp_path / "none")
    monkeypatch.setenv("LFM_REF_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(123)
    zoo.path("tiny-cnn")  # builds it: the recipe seeds the global streams, and gives them back
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(123)))
    model = zoo.load("tiny-cnn", device="cpu")
    folder = tmp_path / "cache" / "zoo" / "tiny-cnn"
    assert (folder / "model.safetensors").exists()
    stamp = (folder / "meta.json").stat().st_mtime_ns
    zoo.load("tiny-cnn", device="cpu")
    assert (folder / "meta.json").stat().st_mtime_ns == stamp  # not rebuilt
    # the rebuild reaches the stated quality
    assert evaluate(model, digits_task("digits", "test")) >= 0.95


@pytest.mark.slow
def test_rebuilt_tiny_gpt_reaches_stated_quality(tmp_path):
    out = zoo.build("tiny-gpt", tmp_path)
    metrics = json.loads((out / "meta.json").read_text())["metrics"]
    assert metrics["train_recall"] >= 0.90 and metrics["held_out_recall"] <= metrics["train_recall"] - 0.5
    assert metrics["held_out_recall"] <= 0.15
    assert metrics["recall_in_context"] >= 0.90 and metrics["recall_after_4_sentences"] >= 0.90
    # Reading is the fragile part of the recipe: the shipped model (built on an Intel CPU) reads 96.4%
    # and follows 80.7% of contradicting documents, a rebuild on an AMD EPYC at one thread 79.4% and
    # 39.8% (its float sums differ, and training drifts from there). The bars are what every rebuild
    # seen so far keeps: it reads far above its 5% held-out recall and often overrules its memory.
    assert metrics["reads_context"] >= 0.75 and metrics["follows_counterfactual"] >= 0.35


@pytest.mark.gpu
def test_zoo_models_run_on_cuda(world):
    model, tok = zoo.load("tiny-gpt", device="cuda")
    assert lm.fact_recall(model, tok, world.split("train")) >= 0.9
    cnn = zoo.load("tiny-cnn", device="cuda")
    assert evaluate(cnn, digits_task("digits", "test")) >= 0.95


def test_shipped_tokenizers_load_on_every_supported_transformers():
    """transformers 5 saves ``TokenizersBackend``, a class 4.x lacks; the shipped configs name the class
    both know and no token types (GPT-2 would add token 0's embedding to every position through them)."""
    for name in ("tiny-gpt",):
        config = json.loads((zoo.path(name) / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert config["model_input_names"] == ["input_ids", "attention_mask"]
        assert "is_local" not in config


def test_a_rebuilt_tokenizer_is_saved_portable(tmp_path, world):
    world.tokenizer().save_pretrained(tmp_path)
    zoo._portable_tokenizer_config(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "token_type_ids" not in config["model_input_names"]


def test_info_prints_without_its_loss_history():
    card = zoo.info("tiny-cnn")
    assert isinstance(card, dict) and len(card["history"]) > 100  # the values are all there ...
    assert "loss values>" in repr(card) and len(repr(card)) < 600  # ... but not in what a cell shows


def test_zoo_list_aligns_its_columns(capsys):
    from lfm_ref.zoo.__main__ import main

    main(["list"])
    lines = capsys.readouterr().out.splitlines()
    about = {line.index(zoo.ZOO[name]["about"]) for line, name in zip(lines[::2], zoo.names())}
    metrics = {len(line) - len(line.lstrip()) for line in lines[1::2]}
    assert len(lines) == 2 * len(zoo.names()) and len(about) == 1 and metrics == about


def test_build_writes_to_the_user_cache_outside_a_checkout(monkeypatch, tmp_path):
    assert zoo.default_build_dir() == zoo.PACKAGE_WEIGHTS  # this checkout: `make zoo` updates what ships
    monkeypatch.setattr(zoo, "_source_checkout", lambda: False)  # as after `pip install lfm_ref`
    monkeypatch.setenv("LFM_REF_CACHE", str(tmp_path))
    assert zoo.default_build_dir() == tmp_path / "zoo"


def test_loading_a_gpt2_names_its_loss(tiny_gpt):
    model, tok = tiny_gpt
    assert model.loss_type == "ForCausalLM"  # transformers 5 would warn "loss_type=None ... unrecognized"
    batch = lm.encode(tok, ["a b"])
    assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)


def test_tiny_mlp_is_exported_with_the_zoo_models():
    from lfm_ref.zoo import models

    assert zoo.TinyMLP is models.TinyMLP and zoo.TinyCNN is models.TinyCNN
    assert zoo.TinyMLP()(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_the_zoo_imports_no_method_module():
    """The core (zoo, data, lm) never imports a method family: the dependency graph is core <- methods."""
    import ast
    from pathlib import Path

    core = Path(zoo.__file__).parents[1]
    for path in [*(core / "zoo").glob("*.py"), *(core / "data").glob("*.py"), core / "lm.py", core / "train.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not any(part in target.split(".") for part in ("retrieval", "tuning", "distill", "reuse")), \
                    f"{path.name} imports {target}"
