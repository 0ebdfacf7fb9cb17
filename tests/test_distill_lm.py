"""Chapter 9: token-level and sequence-level distillation of a causal language model."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref import fit, lm, zoo
from lfm_ref.distill import smaller_gpt2, teacher_corpus, token_kd_loss, token_kd_objective, with_teacher_logits


@pytest.fixture(scope="module")
def batch(world):
    tok = world.tokenizer()
    return lm.lm_dataset(tok, world.corpus()[:6]).tensors  # texts of different lengths: some padding


def tiny_student(vocab, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))  # deterministic


# ----- defining properties ------------------------------------------------------------------------
def test_token_kd_is_zero_when_student_equals_teacher(batch):
    logits = torch.randn(*batch["input_ids"].shape, 252)
    assert token_kd_loss(logits, logits, batch["labels"], temperature=2.0, alpha=1.0).abs() < 1e-6


def test_token_kd_matches_the_per_position_formula(batch):
    """T^2 * mean over the valid positions t of KL(p_T(.|y<t) || q_S(.|y<t)), mixed with the NLL."""
    torch.manual_seed(0)
    labels = batch["labels"]
    s, t = torch.randn(*labels.shape, 252), torch.randn(*labels.shape, 252)
    temp, alpha = 2.0, 0.3
    kls, nlls = [], []
    for b in range(labels.shape[0]):
        for pos in range(labels.shape[1] - 1):
            y = labels[b, pos + 1]
            if y == -100:
                continue
            p = F.softmax(t[b, pos] / temp, -1)
            kls.append((p * (p.log() - F.log_softmax(s[b, pos] / temp, -1))).sum())
            nlls.append(-F.log_softmax(s[b, pos], -1)[y])
    expected = alpha * temp**2 * torch.stack(kls).mean() + (1 - alpha) * torch.stack(nlls).mean()
    assert torch.allclose(token_kd_loss(s, t, labels, temperature=temp, alpha=alpha), expected, atol=1e-5)


def test_token_kd_with_alpha_zero_is_the_models_own_loss(batch):
    """Peer check: with no soft term the loss is exactly Hugging Face's shifted causal-LM cross-entropy."""
    model = tiny_student(252)
    out = model(**batch)
    ours = token_kd_loss(out.logits, torch.randn_like(out.logits), batch["labels"], alpha=0.0)
    assert torch.allclose(ours, out.loss, atol=1e-6)


def test_padding_positions_neither_count_nor_get_gradient(batch):
    labels = batch["labels"]
    s, t = torch.randn(*labels.shape, 252, requires_grad=True), torch.randn(*labels.shape, 252)
    ignored = torch.zeros(labels.shape, dtype=torch.bool)
    ignored[:, :-1] = labels[:, 1:] == -100
    ignored[:, -1] = True  # the last position predicts nothing
    assert ignored.any() and not ignored.all()
    loss = token_kd_loss(s, t, labels)
    loss.backward()
    assert (s.grad[ignored] == 0).all() and (s.grad[~ignored] != 0).any()
    changed = s.detach().clone()
    changed[ignored] = 100.0
    assert torch.allclose(token_kd_loss(changed, t, labels), loss)


def test_offline_teacher_logits_give_the_online_loss(tiny_gpt, world):
    teacher, tok = tiny_gpt
    data = lm.lm_dataset(tok, world.corpus()[:8])
    offline = with_teacher_logits(teacher, data)
    student = tiny_student(len(tok))
    online_loss = token_kd_objective(teacher)(student, data.tensors)
    offline_loss = token_kd_objective(None)(student, offline.tensors)
    assert torch.allclose(online_loss, offline_loss, atol=1e-5)
    assert offline.tensors["teacher_logits"].shape == (*data.tensors["input_ids"].shape, len(tok))


def test_token_kd_training_moves_the_student_towards_the_teacher(tiny_gpt, world):
    teacher, tok = tiny_gpt
    data = with_teacher_logits(teacher, lm.lm_dataset(tok, world.corpus()[:64]))
    student = tiny_student(len(tok))

    def kl():
        return token_kd_loss(student(input_ids=data.tensors["input_ids"]).logits,
                             data.tensors["teacher_logits"], data.tensors["labels"], alpha=1.0).item()

    before = kl()
    fit(student, data, loss_fn=token_kd_objective(None, alpha=1.0), steps=40, batch_size=16, lr=3e-3,
        device="cpu", seed=0)
    assert kl() < 0.75 * before  # 40 steps: the KL falls by a quarter or more
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_corpus_greedy_from_prompts_rewrites_known_facts(tiny_gpt, world):
    """Kim & Rush's setting: the teacher's mode for each source. TinyGPT knows its training facts, so its
    greedy continuation of a fact's prompt starts with the corpus sentence itself (and, as in the packed
    documents it was pretrained on, may run on into further sentences)."""
    teacher, tok = tiny_gpt
    facts = world.split("train")[:12]
    prompts = [f.prompt(t) for f in facts for t in (0, 1)]  # different lengths: left padding is exercised
    texts = teacher_corpus(teacher, tok, prompts=prompts, temperature=0)
    assert len(texts) == len(prompts) and all(t.startswith(p) for t, p in zip(texts, prompts))
    sentences = [f.sentence(t) for f in facts for t in (0, 1)]
    # it recalls 99.8% of its training facts, not all: one of these is a language it gets wrong
    assert sum(text.startswith(s) for text, s in zip(texts, sentences)) >= 0.9 * len(texts)


def test_teacher_corpus_samples_from_scratch_reproducibly(tiny_gpt, world):
    teacher, tok = tiny_gpt
    a = teacher_corpus(teacher, tok, n=40, seed=1)
    assert a == teacher_corpus(teacher, tok, n=40, seed=1) and a != teacher_corpus(teacher, tok, n=40, seed=2)
    assert len(a) == 40
    known = set(world.corpus("train"))
    # documents of sentences, as it was pretrained on: mostly the sentences the teacher memorised
    sentences = [s.strip() + " ." for t in a for s in t.split(" .") if s.strip()]
    assert len(sentences) > len(a)
    assert sum(s in known for s in sentences) >= 0.75 * len(sentences)


def test_smaller_gpt2_keeps_vocabulary_and_context(tiny_gpt):
    teacher, _ = tiny_gpt
    student = smaller_gpt2(teacher, n_layer=2, n_embd=64)
    assert student.config.vocab_size == teacher.config.vocab_size
    assert student.config.n_positions == teacher.config.n_positions
    assert student.config.n_layer == 2 and student.config.n_embd == 64
    assert sum(p.numel() for p in student.parameters()) < 0.2 * sum(p.numel() for p in teacher.parameters())


def test_copy_layers_takes_every_other_teacher_layer(tiny_gpt):
    teacher, _ = tiny_gpt
    student = smaller_gpt2(teacher, n_layer=2, copy_layers=True)
    for i, j in ((0, 0), (1, 2)):
        copied, source = student.transformer.h[i].state_dict(), teacher.transformer.h[j].state_dict()
        for (name, p), q in zip(copied.items(), source.values()):
            assert torch.equal(p, q), name
    full = smaller_gpt2(teacher, n_layer=teacher.config.n_layer, copy_layers=True)  # all layers: the teacher itself
    ids = torch.tensor([[2, 10, 11, 12]])
    assert torch.allclose(full(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)


# ----- random streams and modes: the caller's stay as they were ---------------------------------------
def test_seeded_teacher_corpus_leaves_the_global_stream_alone(tiny_gpt):
    """``seed=`` used to reseed Python, NumPy and torch for the caller; now the draws are the same as after
    ``torch.manual_seed(seed)`` and the caller's stream is untouched."""
    teacher, tok = tiny_gpt
    torch.manual_seed(7)
    expected = teacher_corpus(teacher, tok, n=8)  # the global stream, freshly seeded
    state = torch.get_rng_state()
    assert teacher_corpus(teacher, tok, n=8, seed=7) == expected
    assert torch.equal(torch.get_rng_state(), state)


def test_seeded_smaller_gpt2_leaves_the_global_stream_alone(tiny_gpt):
    teacher, _ = tiny_gpt
    torch.manual_seed(3)
    expected = smaller_gpt2(teacher, n_layer=1)
    state = torch.get_rng_state()
    student = smaller_gpt2(teacher, n_layer=1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q in zip(student.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(p, q), name


def test_functions_that_run_the_teacher_restore_its_mode(tiny_gpt, world):
    teacher, tok = tiny_gpt
    data = lm.lm_dataset(tok, world.corpus()[:4])
    teacher.train()
    try:
        eval_logits = with_teacher_logits(teacher, data).tensors["teacher_logits"]
        assert teacher.training and all(m.training for m in teacher.modules())
        teacher_corpus(teacher, tok, n=2, seed=0, max_new_tokens=3)
        assert teacher.training and all(m.training for m in teacher.modules())
        loss = token_kd_objective(teacher)(tiny_student(len(tok)), data.tensors)
        assert teacher.training and all(m.training for m in teacher.modules())
        assert torch.isfinite(loss)
    finally:
        teacher.eval()
    assert torch.allclose(eval_logits, with_teacher_logits(teacher, data).tensors["teacher_logits"])
    assert all(p.grad is None for p in teacher.parameters())


# ----- errors ---------------------------------------------------------------------------------------
def test_lm_kd_bad_input(tiny_gpt, batch):
    teacher, tok = tiny_gpt
    labels = batch["labels"]
    s = torch.randn(*labels.shape, 252)
    with pytest.raises(ValueError, match="share a"):
        token_kd_loss(s, torch.randn(*labels.shape, 100), labels)
    with pytest.raises(ValueError, match="labels must be"):
        token_kd_loss(s, s, labels[:, :-1])
    with pytest.raises(ValueError, match="nothing to distil"):
        token_kd_loss(s, s, torch.full_like(labels, -100))
    with pytest.raises(ValueError, match="temperature"):
        token_kd_loss(s, s, labels, temperature=0)
    with pytest.raises(ValueError, match="teacher_logits"):
        token_kd_objective(None)(tiny_student(252), batch)
    with pytest.raises(TypeError, match="DictDataset"):
        with_teacher_logits(teacher, (batch["input_ids"],))
    with pytest.raises(ValueError, match="either n"):
        teacher_corpus(teacher, tok)
    with pytest.raises(ValueError, match="either n"):
        teacher_corpus(teacher, tok, n=3, prompts=["Hello"])
    with pytest.raises(ValueError, match="temperature"):
        teacher_corpus(teacher, tok, n=3, temperature=-1)
    with pytest.raises(ValueError, match="context"):
        teacher_corpus(teacher, tok, prompts=[" ".join(["Question"] * (teacher.config.n_positions + 1))])
    with pytest.raises(ValueError, match="n_layer"):
        smaller_gpt2(teacher, n_layer=5)
    with pytest.raises(ValueError, match="teacher's width"):
        smaller_gpt2(teacher, n_layer=2, n_embd=64, copy_layers=True)
    with pytest.raises(TypeError, match="GPT-2 teacher"):
        smaller_gpt2(zoo.load("tiny-cnn", device="cpu"), n_layer=1)


@pytest.mark.gpu
def test_lm_distillation_runs_on_cuda(world):
    teacher, tok = zoo.load("tiny-gpt", device="cuda")
    data = with_teacher_logits(teacher, lm.lm_dataset(tok, world.corpus()[:32]))
    student = smaller_gpt2(teacher, n_layer=1, n_embd=32)
    fit(student, data, loss_fn=token_kd_objective(None), steps=3, batch_size=8, device="cuda")
    assert next(student.parameters()).device.type == "cuda"
    known = set(world.corpus("train"))
    assert sum(t in known for t in teacher_corpus(teacher, tok, n=40, seed=0)) >= 30
