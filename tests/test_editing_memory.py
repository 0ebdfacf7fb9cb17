"""Chapter 16's prompt-side memory editors: the InContextLM shell, SERAC (Mitchell et al., 2022) and
MemPrompt (Madaan et al., 2022)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfm_ref import lm
from lfm_ref.editing import evaluate_edits, sequential_edits
from lfm_ref.editing.incontext import InContextLM
from lfm_ref.editing.memprompt import MemPrompt
from lfm_ref.editing.serac import ScopeClassifier, Serac, scope_examples
from lfm_ref.retrieval.rag import DenseRetriever, mean_hidden


@pytest.fixture(scope="module")
def split(world):
    requests = world.edit_requests(n=40, seed=3, relation="profession")
    return requests[:30], requests[30:]


@pytest.fixture(scope="module")
def scope(tiny_gpt, split):
    model, tok = tiny_gpt
    classifier = ScopeClassifier(model, tok)
    classifier.fit(scope_examples(split[0]))
    return classifier


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_in_context_lm_answers_routed_rows_as_the_reader_reads_them_and_others_bit_equal(tiny_gpt, split):
    model, tok = tiny_gpt
    a, b = split[1][0], split[1][1]
    prompts = [a.prompt, a.paraphrases[0], b.prompt]
    context = a.statement()
    wrapped = InContextLM(model, tok, lambda texts: [context if a.subject in t else None for t in texts])
    assert wrapped.routes(prompts) == [context, context, None]
    got = lm.next_token_logits(wrapped, tok, prompts)
    want = lm.next_token_logits(model, tok, [f"{context} {p}" for p in prompts[:2]])
    assert torch.allclose(got[:2], want, atol=1e-5)
    assert torch.equal(got[2], lm.next_token_logits(model, tok, prompts)[2])  # the base, untouched
    assert list(wrapped.parameters()) == list(model.parameters())  # no parameters of its own
    with pytest.raises(ValueError, match="one context"):
        InContextLM(model, tok, lambda texts: [None]).routes(["a b", "c d"])


def test_scope_classifier_is_its_equation_by_hand():
    # vocabulary of 4 one-hot-like embeddings; edit = tokens [0, 1], input = tokens [1, 2]
    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.e = nn.Embedding(4, 3)
            with torch.no_grad():
                self.e.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]))

        def get_input_embeddings(self):
            return self.e

    g = ScopeClassifier(Emb(), tokenizer=None)
    e_ids, e_mask = torch.tensor([[0, 1]]), torch.tensor([[True, True]])
    x_ids, x_mask = torch.tensor([[1, 2, 3]]), torch.tensor([[True, True, False]])  # token 3 is padding
    w = g._embeddings[0]
    a = F.softplus(g.importance(w[[0, 1]])).squeeze(-1)
    # best matches: token 0 -> max(cos(0,1), cos(0,2)) = 0 (3 is masked); token 1 -> cos(1,1) = 1
    want = g.scale * (a[0] * 0.0 + a[1] * 1.0) / a.sum() + g.bias
    assert torch.allclose(g._logits(e_ids, e_mask, x_ids, x_mask), want, atol=1e-6)  # s * score + b cancels


def test_serac_routes_paraphrases_to_the_counterfactual_and_neighbours_to_the_base(tiny_gpt, split, scope):
    model, tok = tiny_gpt
    _, test = split
    before = _state(model)
    edit = Serac(scope).edit(model, tok, test)
    routes = edit.model.routes([p for r in test for p in (r.prompt, *r.paraphrases)])
    in_scope = sum(c is not None for c in routes) / len(routes)
    neighbours = [p for r in test for p, _ in r.neighbours]
    sent_to_base = sum(c is None for c in edit.model.routes(neighbours)) / len(neighbours)
    assert in_scope >= 0.8 and sent_to_base >= 0.9
    base_rows = [p for p, c in zip(neighbours, edit.model.routes(neighbours)) if c is None]
    assert torch.equal(lm.next_token_logits(edit.model, tok, base_rows),
                       lm.next_token_logits(model, tok, base_rows))  # the base model's own answer
    scores = evaluate_edits(edit.model, tok, test)
    assert scores.reliability >= 0.7 and scores.locality >= 0.9
    statements, prompts = [r.statement() for r in test], [r.prompt for r in test]
    assert torch.allclose(scope.pair_logits(statements, prompts),
                          scope.logits(statements, prompts).diagonal())  # pairs = the matrix's diagonal
    assert edit.restore() is model and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_serac_and_memprompt_extend_one_memory_and_undo_it_in_order(tiny_gpt, split, scope):
    model, tok = tiny_gpt
    _, test = split
    retriever = DenseRetriever(model, tok, ["Ana works as a poet ."])
    for editor in (Serac(scope), MemPrompt(retriever)):
        first = editor.edit(model, tok, test[:2])
        second = editor.edit(first.model, tok, test[2:5])
        assert second.model is first.model and len(first.model.routes(["x y"])) == 1
        memory = first.model.router
        size = len(getattr(memory, "statements", getattr(memory, "feedback", None)))
        assert size == 5
        assert second.restore() is first.model
        assert len(getattr(memory, "statements", getattr(memory, "feedback", None))) == 2
        assert first.restore() is model
        scores = sequential_edits(editor, model, tok, test[:4], batch_size=2)
        assert len(scores) == 2 and scores[-1].n_edits == 4


def test_memprompt_prepends_the_nearest_feedback_and_its_threshold_separates_training_pairs(tiny_gpt, split):
    model, tok = tiny_gpt
    train, test = split
    retriever = DenseRetriever(model, tok, ["Ana works as a poet ."])
    editor = MemPrompt(retriever)
    edit = editor.edit(model, tok, test)
    x = test[2].prompt
    keys = mean_hidden(model, tok, [r.statement() for r in test])
    nearest = int((retriever.query_map(mean_hidden(model, tok, [x])) @ keys.T).argmax())
    assert edit.model.routes([x]) == [test[nearest].statement()]  # argmax_i s(x, m_i), no threshold
    edit.restore()
    examples = scope_examples(train)
    tau = editor.fit_threshold(examples)
    labels = torch.tensor([y for *_, y in examples])
    s = (retriever.query_map(mean_hidden(model, tok, [q for _, q, _ in examples]))
         * mean_hidden(model, tok, [m for m, _, _ in examples])).sum(-1)
    assert torch.allclose(editor.pair_scores([m for m, _, _ in examples], [q for _, q, _ in examples]), s)
    accuracy = ((s >= tau).float() == labels).float().mean()
    assert accuracy >= max(labels.mean(), 1 - labels.mean())  # no worse than a constant answer
    for cut in s.tolist():  # and no other cut does better on the training pairs
        assert ((s >= cut).float() == labels).float().mean() <= accuracy + 1e-6


def test_memory_editors_run_unchanged_on_a_config_built_gpt2(world):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=48, n_layer=2,
                                       n_head=4)).eval()
    requests = world.edit_requests(n=8, seed=1, relation="profession")
    scope = ScopeClassifier(model, tok)
    scope.fit(scope_examples(requests[:6]), steps=20)
    for editor in (Serac(scope), MemPrompt(DenseRetriever(model, tok, ["a ."]))):
        with editor.edit(model, tok, requests[6:]) as edited:
            assert isinstance(edited, InContextLM)
            assert lm.next_token_logits(edited, tok, [requests[6].prompt]).shape == (1, len(tok))


@pytest.mark.gpu
def test_memory_editors_on_cuda(world):
    from lfm_ref import zoo

    model, tok = zoo.load("tiny-gpt", device="cuda")
    requests = world.edit_requests(n=8, seed=1, relation="profession")
    scope = ScopeClassifier(model, tok)
    scope.fit(scope_examples(requests[:6]))
    for editor in (Serac(scope), MemPrompt(DenseRetriever(model, tok, ["a ."]))):
        with editor.edit(model, tok, requests[6:]) as edited:
            assert evaluate_edits(edited, tok, requests[6:]).reliability >= 0.5
