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
