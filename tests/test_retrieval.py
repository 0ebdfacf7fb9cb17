"""Database augmentation (Part I, chapter 6): kNN-LM's interpolation, the dense retriever, REPLUG's
ensemble and LSR loss, REALM's gradient in closed form, and the retrieve -> read pipeline."""

import pytest
import torch

from lfm_ref import fit
from lfm_ref.data import FactWorld
from lfm_ref.lm import encode, next_token_logits, target_ids
from lfm_ref.retrieval import (
    DenseRetriever,
    answer_log_probs,
    answer_with_retrieval,
    build_datastore,
    evaluate_retrieval,
    knn_lm_probs,
    mean_hidden,
    replug_log_probs,
    replug_lsr_loss,
    retrieval_objective,
    uprise_loss,
    with_documents,
)


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
    assert not p.requires_grad
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
    with pytest.raises(TypeError, match="documents must be a list of strings"):
        DenseRetriever(model, tok, DOCS[0])
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


def test_inference_helpers_give_the_model_its_mode_back(lm):
    """Each helper runs the model in eval mode and leaves a training model in train mode."""
    model, tok = lm
    model.train()
    try:
        store = build_datastore(model, tok, DOCS)
        knn_lm_probs(model, tok, [CITY.prompt(0)], store, lam=0.5)
        mean_hidden(model, tok, DOCS)
        answer_log_probs(model, tok, DOCS, [CITY.object, CITY.object])
        retriever = DenseRetriever(model, tok, DOCS)
        retriever.retrieve([CITY.prompt(1)], k=1)
        answer_with_retrieval(retriever, model, tok, [CITY.prompt(1)], k=2)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    store = build_datastore(model, tok, DOCS)
    assert not model.training


def test_the_retriever_owns_only_its_query_map_and_index(lm):
    model, tok = lm
    retriever = DenseRetriever(model, tok, DOCS)
    assert set(retriever.state_dict()) == {"index", "query_map.weight"}
    assert [p is retriever.query_map.weight for p in retriever.parameters()] == [True]
    assert retriever.encoder is model and not any(m is model for m in retriever.modules())
    retriever.train()
    assert not model.training  # the frozen LM is not the retriever's to switch


def test_replug_over_the_vocabulary_is_the_per_answer_ensemble():
    g = torch.Generator().manual_seed(0)
    scores, reader = torch.randn(3, 4, generator=g), torch.randn(3, 4, 7, generator=g).log_softmax(-1)
    every_token = replug_log_probs(reader, scores)  # (3, 7)
    for y in range(7):
        assert torch.allclose(every_token[:, y], replug_log_probs(reader[..., y], scores), atol=1e-6)
    assert torch.allclose(every_token.exp().sum(-1), torch.ones(3), atol=1e-5)  # still a distribution


def test_answer_with_retrieval_reads_the_retrieved_documents(lm):
    model, tok = lm
    retriever = DenseRetriever(model, tok, DOCS)
    queries = [CITY.prompt(1), WORLD.facts[0].prompt(0)]
    rag, idx = answer_with_retrieval(retriever, model, tok, queries, k=2, mode="rag")
    assert rag.shape == (2, model.config.vocab_size) and idx.shape == (2, 2)
    texts = with_documents(DOCS, idx[:, :1], queries)
    assert torch.allclose(rag, next_token_logits(model, tok, texts).log_softmax(-1), atol=1e-6)
    replug, _ = answer_with_retrieval(retriever, model, tok, queries, k=2)
    assert not rag.requires_grad and not replug.requires_grad  # inference only
    scores, _ = retriever.retrieve(queries, 2)
    reader = next_token_logits(model, tok, with_documents(DOCS, idx, queries)).log_softmax(-1)
    assert torch.allclose(replug, replug_log_probs(reader.view(2, 2, -1), scores), atol=1e-6)
    answers = [CITY.object, WORLD.facts[0].object]
    accuracy, recall = evaluate_retrieval(retriever, model, tok, queries, answers, [0, 1], k=2)
    predicted = replug.argmax(-1)
    assert accuracy == pytest.approx((predicted == target_ids(tok, answers)).float().mean().item())
    assert recall == 1.0  # k = 2 of 2 documents: the gold one is always retrieved


@pytest.mark.parametrize("loss", ["replug_lsr", "uprise", "realm"])
def test_retrieval_objective_trains_the_query_map_with_fit(lm, loss):
    model, tok = lm
    retriever = DenseRetriever(model, tok, DOCS)
    before = retriever.query_map.weight.detach().clone()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = [(CITY.prompt(1), CITY.object), (WORLD.facts[0].prompt(0), WORLD.facts[0].object)]
    loader = torch.utils.data.DataLoader(pairs, batch_size=2, collate_fn=list)
    losses = fit(model, loader, loss_fn=retrieval_objective(retriever, tok, k=2, loss=loss),
                 params=retriever.query_map.parameters(), steps=2, lr=1e-2, device="cpu")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(retriever.query_map.weight, before)
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items())  # only W trained


def test_in_batch_contrastive_loss_is_the_cross_entropy_of_the_diagonal():
    from lfm_ref.retrieval.contrastive import in_batch_contrastive_loss
    torch.manual_seed(0)
    q, d = torch.randn(5, 8), torch.randn(5, 8)
    scores = q @ d.T
    expected = -(scores.log_softmax(-1).diagonal()).mean()
    assert torch.allclose(in_batch_contrastive_loss(q, d), expected, atol=1e-6)
    # aligned pairs far apart from the rest: the loss goes to zero
    e = torch.eye(5) * 20
    assert in_batch_contrastive_loss(e, e) < 1e-6
    with pytest.raises(ValueError, match="document_embeddings"):
        in_batch_contrastive_loss(q, d[:3])


def test_train_contrastive_learns_to_retrieve_a_paraphrase(lm):
    from lfm_ref.retrieval.contrastive import train_contrastive
    model, tok = lm
    facts = [f for f in WORLD.split("train") if f.relation == "born_in"][:40]
    documents = [f.sentence(0) for f in facts]
    retriever = DenseRetriever(model, tok, documents)
    queries = [f.prompt(1) for f in facts]

    def recall_at_1():
        with torch.no_grad():
            return (retriever.retrieve(queries, 1)[1][:, 0] == torch.arange(len(facts))).float().mean().item()

    before, index = recall_at_1(), retriever.index.clone()
    retriever.eval()  # it comes back in the mode it was given
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    pairs = [(f.prompt(a), f.sentence((a + 1) % 3)) for f in facts for a in range(3)]
    losses = train_contrastive(retriever, pairs, steps=200, batch_size=32, lr=1e-2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched
    assert not retriever.training and torch.equal(retriever.index, index)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    assert recall_at_1() > before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # the encoder is frozen
    with pytest.raises(TypeError, match="retriever must be a DenseRetriever"):
        train_contrastive(model, pairs)
    with pytest.raises(ValueError, match="pairs must be"):
        train_contrastive(retriever, pairs[:1])
    with pytest.raises(ValueError, match="batch_size"):
        train_contrastive(retriever, pairs, batch_size=1)
