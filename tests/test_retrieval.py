"""Database augmentation (Part I, chapter 6): kNN-LM's interpolation, the dense retriever, REPLUG's
ensemble and LSR loss, and REALM's gradient in closed form."""
import pytest
import torch

from lfm_ref.data import FactWorld
from lfm_ref.lm import encode
from lfm_ref.retrieval import (DenseRetriever, build_datastore, knn_lm_probs, mean_hidden, reading_pairs,
                               replug_log_probs,
                               replug_lsr_loss, uprise_loss, with_documents)


@pytest.fixture(scope="module")
def lm():
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = WORLD.tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    return model, tok


WORLD = FactWorld()
CITY = next(f for f in WORLD.facts if f.relation == "country")
DOCS = [CITY.sentence(0), WORLD.facts[0].sentence(1)]


def test_the_datastore_holds_one_entry_per_next_token(lm):
    model, tok = lm
    store = build_datastore(model, tok, DOCS)
    n_tokens = encode(tok, DOCS)["attention_mask"].sum().item()
    assert len(store.keys) == len(store.values) == n_tokens - len(DOCS)
    first = tok(DOCS[0])["input_ids"]
    assert store.values[: len(first) - 1].tolist() == first[1:]


def test_knn_lm_interpolates_and_weight_zero_is_the_lm(lm):
    model, tok = lm
    store = build_datastore(model, tok, DOCS)
    prompts = [CITY.prompt(0), "The city of"]
    batch = encode(tok, prompts)
    logits = model(**batch).logits
    last = batch["attention_mask"].sum(1) - 1
    p_lm = logits[torch.arange(2), last].softmax(-1)
    assert torch.allclose(knn_lm_probs(model, tok, prompts, store, lam=0.0), p_lm, atol=1e-6)
    # a prompt that is a prefix of a stored text finds its own context at distance 0: with k = 1 and
    # lambda = 1 all the mass goes to the token that followed it in the datastore
    p = knn_lm_probs(model, tok, prompts[:1], store, lam=1.0, k=1)
    assert p[0, tok(" " + CITY.object, add_special_tokens=False)["input_ids"][0]] == pytest.approx(1.0)
    assert tok.unk_token_id not in tok(DOCS[0])["input_ids"]
    mixed = knn_lm_probs(model, tok, prompts, store, lam=0.3)
    knn = knn_lm_probs(model, tok, prompts, store, lam=1.0)
    assert torch.allclose(mixed, 0.3 * knn + 0.7 * p_lm, atol=1e-6)
    assert torch.allclose(mixed.sum(-1), torch.ones(2), atol=1e-5)


def test_dense_retriever_scores_and_swapping_documents(lm):
    model, tok = lm
    retriever = DenseRetriever(model, tok, DOCS)
    scores = retriever.scores(DOCS)
    assert torch.allclose(scores, mean_hidden(model, tok, DOCS) @ mean_hidden(model, tok, DOCS).T, atol=1e-5)
    _, idx = retriever.retrieve(["x"], k=2)
    assert sorted(idx[0].tolist()) == [0, 1]
    assert with_documents(DOCS, torch.tensor([[1, 0]]), ["q"]) == [f"{DOCS[1]} q", f"{DOCS[0]} q"]
    retriever.set_documents(DOCS[:1])
    assert retriever.index.shape[0] == 1 and [p for p in retriever.parameters() if p.requires_grad]


def test_replug_ensemble_and_realm_gradient_in_closed_form():
    scores = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    reader = torch.tensor([[-0.1, -3.0, -0.5]])
    prior = scores.softmax(-1)
    expected = torch.log((prior * reader.exp()).sum())
    marginal = replug_log_probs(reader, scores)
    assert torch.allclose(marginal, expected.reshape(1), atol=1e-6)
    marginal.sum().backward()
    # REALM: d log p(y|x) / d s_z = p(z | x, y) - p(z | x)
    posterior = prior * reader.exp() / (prior * reader.exp()).sum()
    assert torch.allclose(scores.grad, (posterior - prior).detach(), atol=1e-6)


def test_replug_lsr_loss_is_a_kl_that_vanishes_when_retrieval_matches_the_lm():
    reader = torch.tensor([[-0.2, -2.0, -4.0]])
    assert replug_lsr_loss(reader.clone(), reader).item() == pytest.approx(0.0, abs=1e-7)
    scores = torch.zeros(1, 3, requires_grad=True)
    loss = replug_lsr_loss(scores, reader)
    p, q = torch.full((3,), 1 / 3), reader[0].softmax(-1)
    assert loss.item() == pytest.approx((p * (p.log() - q.log())).sum().item(), rel=1e-5)
    loss.backward()
    assert scores.grad[0, 0] < 0  # the retriever is pushed towards the document the LM liked


def test_uprise_loss_makes_the_most_helpful_prompt_the_positive():
    scores = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    reader = torch.tensor([[-3.0, -2.0, -0.1]])  # the third prompt helps the LM most
    loss = uprise_loss(scores, reader)
    assert loss.item() == pytest.approx(-scores.log_softmax(-1)[0, 2].item(), rel=1e-6)
    loss.backward()
    assert scores.grad[0, 2] < 0 < scores.grad[0, 1]


def test_reading_pairs_teach_reading_not_memory():
    pairs = reading_pairs(WORLD, 200, seed=0)
    held = {f.subject for f in WORLD.split("held_out")} - {f.subject for f in WORLD.split("train")}
    assert len(pairs) == 200 and not any(any(s in text for s in held) for text, _ in pairs)
    # the answer is always the object stated by the document at the start of the text
    assert all(f" {answer} " in f" {text.split(' . ')[0]} " for text, answer in pairs)
    false = sum(not any(f.subject in text and f.object == answer for f in WORLD.facts) for text, answer in pairs)
    assert 0.3 < false / 200 < 0.7


def test_retrieval_bad_input(lm):
    model, tok = lm
    store = build_datastore(model, tok, DOCS)
    with pytest.raises(ValueError, match="lam"):
        knn_lm_probs(model, tok, ["a"], store, lam=1.5)
    with pytest.raises(ValueError, match="datastore's size"):
        knn_lm_probs(model, tok, ["a"], store, k=10_000)
    with pytest.raises(ValueError, match="empty"):
        DenseRetriever(model, tok, [])
    with pytest.raises(ValueError, match="k must lie"):
        DenseRetriever(model, tok, DOCS).retrieve(["q"], k=3)
    with pytest.raises(ValueError, match="must both be"):
        replug_log_probs(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.gpu
def test_knn_lm_on_cuda(lm):
    model, tok = lm
    model = model.cuda()
    store = build_datastore(model, tok, DOCS)
    p = knn_lm_probs(model, tok, [CITY.prompt(0)], store, lam=0.5)
    assert p.is_cuda and torch.allclose(p.sum(-1), torch.ones(1, device="cuda"), atol=1e-5)
    model.cpu()
