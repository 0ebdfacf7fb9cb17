"""GRACE (Hartvigsen et al., 2023): the codebook rule, bit-equal pass-through outside every radius,
sequential edits that extend one codebook, and a bit-equal restore."""
import pytest
import torch
from torch import nn

from lfm_ref import hooks, lm
from lfm_ref.editing import evaluate_edits
from lfm_ref.editing.grace import Grace, GraceLayer

LAYER = "transformer.h.2.mlp.c_proj"


def test_codebook_rule_is_eq_1_by_hand():
    torch.manual_seed(0)
    layer = GraceLayer(nn.Linear(3, 2))
    layer.keys = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    layer.radii = torch.tensor([1.0, 0.5])
    layer.values.extend([nn.Parameter(torch.tensor([7.0, 7.0])), nn.Parameter(torch.tensor([-3.0, 1.0]))])
    h = torch.tensor([[0.5, 0.5, 0.0], [5.0, 0.6, 0.0], [4.8, 0.0, 0.0]])
    out = layer(h)
    assert torch.equal(out[0], torch.tensor([7.0, 7.0]))       # within eps_0 of k_0
    assert torch.equal(out[1], layer.base(h[1]))                # nearest k_1 but outside eps_1
    assert torch.equal(out[2], torch.tensor([-3.0, 1.0]))       # within eps_1 of k_1


def test_grace_edits_and_leaves_inputs_outside_the_radii_bit_equal(tiny_gpt, world):
    model, tok = tiny_gpt
    requests = world.edit_requests(n=3, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    original = hooks.get_module(model, LAYER)
    neighbours = [p for r in requests for p, _ in r.neighbours]
    clean = lm.next_token_logits(model, tok, neighbours)
    editor = Grace(LAYER, radius=0.5)
    edits, current = [], model
    for r in requests:
        edits.append(editor.edit(current, tok, [r]))
        current = edits[-1].model
    adaptor = hooks.get_module(current, LAYER)
    assert isinstance(adaptor, GraceLayer) and len(adaptor.keys) == 3
    assert evaluate_edits(current, tok, requests).reliability == 1
    batch = lm.encode(tok, neighbours)
    with torch.no_grad(), hooks.capture_inputs(current, [LAYER]) as ins:
        current(**batch)
    dist = torch.cdist(ins[LAYER].reshape(-1, ins[LAYER].shape[-1]), adaptor.keys)
    outside = (dist > adaptor.radii).all()
    assert outside, "the chosen radius should leave these neighbours outside every key"
    assert torch.equal(lm.next_token_logits(current, tok, neighbours), clean)
    for e in reversed(edits):
        e.restore()
    assert hooks.get_module(model, LAYER) is original
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_grace_runs_unchanged_on_a_config_built_gpt2(world):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=48, n_layer=2,
                                       n_head=4)).eval()
    request = world.edit_requests(n=1, seed=1)
    with Grace("transformer.h.1.mlp.c_proj", steps=100, lr=0.5).edit(model, tok, request) as edited:
        assert evaluate_edits(edited, tok, request).reliability == 1
    assert not isinstance(hooks.get_module(model, "transformer.h.1.mlp.c_proj"), GraceLayer)


def test_grace_bad_inputs(tiny_gpt, world):
    model, tok = tiny_gpt
    requests = world.edit_requests(n=2, seed=0)
    with pytest.raises(ValueError, match="at most 1 request"):
        Grace(LAYER).edit(model, tok, requests)
    with pytest.raises(ValueError, match="has no module 'transformer.h.9.mlp.c_proj'"):
        Grace("transformer.h.9.mlp.c_proj").edit(model, tok, requests[:1])
    with pytest.raises(TypeError, match="GRACE wraps a linear layer"):
        Grace("transformer.h.2.mlp").edit(model, tok, requests[:1])
    with pytest.raises(ValueError, match="radius must lie in"):
        Grace(LAYER, radius=0)


@pytest.mark.gpu
def test_grace_on_cuda(world):
    from lfm_ref import zoo

    model, tok = zoo.load("tiny-gpt", device="cuda")
    request = world.edit_requests(n=1, seed=2)
    with Grace(LAYER).edit(model, tok, request) as edited:
        assert evaluate_edits(edited, tok, request).reliability == 1
