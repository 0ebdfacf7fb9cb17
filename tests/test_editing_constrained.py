"""Chapter 17's constrained-tuning editors: FT and FT-L (Zhu et al., 2020)."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref.editing.base import evaluate_edits, sequential_edits
from lfm_ref.editing.finetune import FineTuneEditor, mlp_name


@pytest.fixture(scope="module")
def requests(world):
    return world.edit_requests(n=6, seed=2)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(model, state):
    return all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bound", [None, 5e-3])
def test_restore_is_bit_equal_and_only_the_chosen_weight_moves(tiny_gpt, requests, bound):
    model, tok = tiny_gpt
    before = _state(model)
    edit = FineTuneEditor(norm_bound=bound, steps=5).edit(model, tok, requests)
    name = mlp_name(model, 1) + ".weight"
    moved = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert moved == [name]
    assert all(p.grad is None for p in model.parameters())  # as found: no gradients left behind
    assert edit.restore() is model and _equal(model, before) and not model.training


def test_ft_l_change_never_exceeds_its_bound_and_sits_on_the_box_when_pushed(tiny_gpt, requests):
    # projected gradient descent onto ||W - W0||_inf <= delta (Zhu et al., Eq. 2): with a rate far
    # larger than delta, AdamW's first step moves each entry by lr * g / (|g| + eps) ~ lr, so the
    # projection puts (nearly) every entry that had a gradient exactly on the box's face, +-delta
    model, tok = tiny_gpt
    name = mlp_name(model, 2) + ".weight"
    w0 = model.state_dict()[name].clone()
    delta = 1e-3
    edit = FineTuneEditor(layer=2, norm_bound=delta, steps=1, lr=1.0).edit(model, tok, requests)
    change = (model.state_dict()[name] - w0).abs()
    assert change.max() <= delta + 1e-7
    on_face = (change[change > 0] - delta).abs() < 1e-6
    assert on_face.float().mean() > 0.99
    edit.restore()


def test_unconstrained_ft_is_reliable_on_tiny_gpt(tiny_gpt, requests):
    model, tok = tiny_gpt
    with FineTuneEditor(norm_bound=None).edit(model, tok, requests) as edited:
        assert evaluate_edits(edited, tok, requests).reliability == 1


def test_sequential_edits_restore_in_reverse_order(tiny_gpt, requests):
    model, tok = tiny_gpt
    before = _state(model)
    scores = sequential_edits(FineTuneEditor(steps=3), model, tok, requests, batch_size=2)
    assert len(scores) == 3 and scores[-1].retention is not None and _equal(model, before)


def test_runs_on_a_config_built_gpt2_of_another_size(world):
    tok = world.tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=64))
    before = _state(model)
    edit = FineTuneEditor(layer=0, steps=3).edit(model, tok, world.edit_requests(n=2, seed=0))
    edit.restore()
    assert _equal(model, before)


def test_layer_out_of_range_lists_the_valid_ones(tiny_gpt, requests):
    model, tok = tiny_gpt
    with pytest.raises(ValueError, match=r"layer must be one of \[0, 1, 2, 3\]"):
        FineTuneEditor(layer=4).edit(model, tok, requests)


@pytest.mark.gpu
def test_ft_l_on_cuda(world):
    from lfm_ref import zoo

    model, tok = zoo.load("tiny-gpt", device="cuda")
    requests = world.edit_requests(n=4, seed=0)
    before = _state(model)
    edit = FineTuneEditor(norm_bound=5e-3, steps=5).edit(model, tok, requests)
    assert next(model.parameters()).device.type == "cuda"
    edit.restore()
    assert _equal(model, before)


# ----- Transformer-Patcher (Huang et al., 2023) ----------------------------------------------------
from lfm_ref import hooks  # noqa: E402
from lfm_ref.editing.patcher import PatchedFFN, TransformerPatcher  # noqa: E402


@pytest.fixture(scope="module")
def memory(world, requests):
    edited = {r.subject for r in requests}
    return [f.prompt(0) for f in world.split("train") if f.subject not in edited][:60]


def test_patched_ffn_is_the_papers_equation_by_hand():
    # FFN_p(q) = FFN(q) + relu(q . k + b) v: q = (1, 2), k = (1, -1), b = 3 -> a = 2, v = (0.5, 1)
    ffn = PatchedFFN(torch.nn.Linear(2, 2, bias=False), 2)
    torch.nn.init.zeros_(ffn.base.weight)
    ffn.keys = torch.nn.Parameter(torch.tensor([[1.0, -1.0]]), requires_grad=False)
    ffn.biases = torch.nn.Parameter(torch.tensor([3.0]), requires_grad=False)
    ffn.values = torch.nn.Parameter(torch.tensor([[0.5, 1.0]]), requires_grad=False)
    assert torch.allclose(ffn(torch.tensor([[1.0, 2.0]])), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(ffn(torch.tensor([[0.0, 5.0]])), torch.zeros(1, 2))  # a = -2: silent


def test_patcher_neuron_is_silent_on_its_memory_and_one_neuron_per_edit(tiny_gpt, requests, memory):
    model, tok = tiny_gpt
    before, original = _state(model), hooks.get_module(model, "transformer.h.3.mlp")
    editor = TransformerPatcher(memory, steps=30)
    first = editor.edit(model, tok, requests[:1])
    second = editor.edit(first.model, tok, requests[1:2])
    ffn = hooks.get_module(model, "transformer.h.3.mlp")
    assert isinstance(ffn, PatchedFFN) and ffn.keys.shape[0] == 2
    q, mask = editor._queries(model, tok, "transformer.h.3.mlp", memory)
    assert (ffn.activations(q[mask.bool()]) <= 1e-5).all()
    assert evaluate_edits(model, tok, requests[:2]).locality == 1
    second.restore()
    assert hooks.get_module(model, "transformer.h.3.mlp").keys.shape[0] == 1
    first.restore()
    assert hooks.get_module(model, "transformer.h.3.mlp") is original and _equal(model, before)


def test_patcher_takes_one_request_per_call(tiny_gpt, requests, memory):
    model, tok = tiny_gpt
    with pytest.raises(ValueError, match="at most 1 request"):
        TransformerPatcher(memory).edit(model, tok, requests[:2])


def test_patcher_on_a_config_built_gpt2(world, memory):
    tok = world.tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=3, n_embd=48, n_head=2, n_positions=64))
    before = _state(model)
    edit = TransformerPatcher(memory, steps=5).edit(model, tok, world.edit_requests(n=1, seed=0))
    edit.restore()
    assert _equal(model, before)


@pytest.mark.gpu
def test_patcher_on_cuda(world, memory):
    from lfm_ref import zoo

    model, tok = zoo.load("tiny-gpt", device="cuda")
    before = _state(model)
    edit = TransformerPatcher(memory, steps=5).edit(model, tok, world.edit_requests(n=1, seed=0))
    edit.restore()
    assert _equal(model, before)


# ----- CaliNet (Dong et al., 2022) -----------------------------------------------------------------
import torch.nn.functional as F  # noqa: E402

from lfm_ref import lm  # noqa: E402
from lfm_ref.editing.calinet import CalibratedFFN, CaliNet  # noqa: E402


def test_calibrated_ffn_is_the_papers_equation_by_hand_and_the_model_at_init():
    # FFN'(h) = FFN(h) + gelu(h K_c^T) V_c with K_c = [[1, 0]], V_c = [[2, -1]], h = (1.5, 3)
    base = torch.nn.Linear(2, 2)
    ffn = CalibratedFFN(base, 2, slots=1)
    h = torch.tensor([[1.5, 3.0]])
    assert torch.equal(ffn(h), base(h))  # V_c = 0 at init: the calibrated FFN is the FFN
    with torch.no_grad():
        ffn.keys.copy_(torch.tensor([[1.0, 0.0]]))
        ffn.values.copy_(torch.tensor([[2.0, -1.0]]))
    a = F.gelu(torch.tensor(1.5), approximate="tanh")
    assert torch.allclose(ffn(h), base(h) + a * torch.tensor([[2.0, -1.0]]))


def test_calinet_trains_only_its_slots_and_restore_gives_back_the_ffn_object(tiny_gpt, requests):
    model, tok = tiny_gpt
    before, original = _state(model), hooks.get_module(model, "transformer.h.3.mlp")
    first = CaliNet(steps=40).edit(model, tok, requests[:3])
    ffn = hooks.get_module(model, "transformer.h.3.mlp")
    assert isinstance(ffn, CalibratedFFN) and ffn.base is original
    assert ffn.keys.shape == (64, model.config.n_embd) and not ffn.values.requires_grad
    assert all(torch.equal(before[f"transformer.h.3.mlp.{k}"], v)  # the FFN itself is frozen
               for k, v in original.state_dict().items())
    assert evaluate_edits(model, tok, requests[:3]).reliability == 1
    slots = (ffn.keys.detach().clone(), ffn.values.detach().clone())
    second = CaliNet(steps=10).edit(model, tok, requests[3:4])  # the same memory, trained further
    assert hooks.get_module(model, "transformer.h.3.mlp") is ffn
    assert not torch.equal(ffn.values, slots[1])
    second.restore()
    assert torch.equal(ffn.keys, slots[0]) and torch.equal(ffn.values, slots[1])
    assert first.restore() is model and hooks.get_module(model, "transformer.h.3.mlp") is original
    assert _equal(model, before) and not model.training


def test_calinet_on_a_config_built_gpt2(world):
    tok = world.tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2,
                                       n_positions=64))
    before = _state(model)
    with CaliNet(layer=0, steps=3).edit(model, tok, world.edit_requests(n=2, seed=0)) as edited:
        assert isinstance(hooks.get_module(edited, "transformer.h.0.mlp"), CalibratedFFN)
    assert _equal(model, before)


# ----- natural-language patches (Murty et al., 2022) ----------------------------------------------
from lfm_ref.editing.incontext import InContextLM  # noqa: E402
from lfm_ref.editing.nl_patches import (  # noqa: E402
    LanguagePatch,
    NaturalLanguagePatches,
    gate_examples,
    patch_for,
)
from lfm_ref.editing.serac import ScopeClassifier  # noqa: E402


@pytest.fixture(scope="module")
def gate(tiny_gpt, world):
    model, tok = tiny_gpt
    g = ScopeClassifier(model, tok)
    g.fit(gate_examples(world.edit_requests(n=30, seed=5, relation="profession")))
    return g


def test_gated_rows_predict_the_mixture_of_reader_and_base(tiny_gpt, requests):
    # P(y | x) = g I(y | x, q) + (1 - g) f(y | x) at the last position (Murty et al., Eq. 1)
    model, tok = tiny_gpt
    r = requests[0]
    prompts = [r.prompt, requests[1].prompt]
    for g in (0.0, 0.3, 1.0):
        wrapped = InContextLM(model, tok, lambda texts, g=g: [(r.statement(), g)] * len(texts))
        got = lm.next_token_logits(wrapped, tok, prompts).softmax(-1)
        read = lm.next_token_logits(model, tok, [f"{r.statement()} {p}" for p in prompts]).softmax(-1)
        base = lm.next_token_logits(model, tok, prompts).softmax(-1)
        assert torch.allclose(got, g * read + (1 - g) * base, atol=1e-5)
    with pytest.raises(ValueError, match=r"gate must lie in \[0, 1\], got 1.5"):
        InContextLM(model, tok, lambda texts: [("a .", 1.5)] * len(texts)).routes(["a b"])


def test_a_patch_applies_where_its_condition_holds_and_nowhere_else(tiny_gpt, world, gate):
    model, tok = tiny_gpt
    test = world.edit_requests(n=8, seed=6, relation="profession")
    assert patch_for(test[0]) == LanguagePatch(test[0].subject, test[0].statement())
    before = _state(model)
    edit = NaturalLanguagePatches(gate).edit(model, tok, test)
    gates = [g for _, g in edit.model.routes([p for r in test for p in (r.prompt, *r.paraphrases)])]
    neighbours = [p for r in test for p, _ in r.neighbours]
    off = [g for _, g in edit.model.routes(neighbours)]
    assert min(gates) > 0.5 and sum(g < 0.5 for g in off) / len(off) >= 0.8  # no hard negatives here
    scores = evaluate_edits(edit.model, tok, test)
    assert scores.reliability >= 0.8 and scores.locality >= 0.9
    assert edit.restore() is model and _equal(model, before)


def test_patches_accumulate_and_undo_in_order(tiny_gpt, world, gate):
    model, tok = tiny_gpt
    test = world.edit_requests(n=4, seed=6, relation="profession")
    editor = NaturalLanguagePatches(gate)
    first = editor.edit(model, tok, test[:2])
    second = editor.edit(first.model, tok, test[2:])
    assert second.model is first.model and len(first.model.router.patches) == 4
    assert second.restore() is first.model and len(first.model.router.patches) == 2
    assert first.restore() is model


def test_nl_patches_on_a_config_built_gpt2(world):
    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=48, n_head=4,
                                       n_positions=64)).eval()
    requests = world.edit_requests(n=8, seed=1, relation="profession")
    g = ScopeClassifier(model, tok)
    g.fit(gate_examples(requests[:6]), steps=20)
    with NaturalLanguagePatches(g).edit(model, tok, requests[6:]) as edited:
        assert lm.next_token_logits(edited, tok, [requests[6].prompt]).shape == (1, len(tok))


@pytest.mark.gpu
def test_calinet_and_nl_patches_on_cuda(world):
    from lfm_ref import zoo

    model, tok = zoo.load("tiny-gpt", device="cuda")
    requests = world.edit_requests(n=8, seed=1, relation="profession")
    before = _state(model)
    with CaliNet(steps=20).edit(model, tok, requests[:2]) as edited:
        assert evaluate_edits(edited, tok, requests[:2]).reliability >= 0.5
    assert _equal(model, before)
    g = ScopeClassifier(model, tok)
    g.fit(gate_examples(requests[:6]))
    with NaturalLanguagePatches(g).edit(model, tok, requests[6:]) as edited:
        assert evaluate_edits(edited, tok, requests[6:]).reliability >= 0.5
