"""Locate and edit (chapter 18): causal tracing, knowledge neurons, ROME and MEMIT, each against
the closed form or the defining property its paper states (no editing library installs here)."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref import lm
from lfm_ref.editing.base import subject_last_token
from lfm_ref.editing.finetune import mlp_name
from lfm_ref.editing.knowledge_neurons import KnowledgeNeuronEditor, integrated_gradients, neuron_probability
from lfm_ref.editing.memit import Memit, memit_update
from lfm_ref.editing.rome import Rome, check_invertible, key_covariance, mlp_keys, rank_one_update, target_deltas
from lfm_ref.editing.tracing import causal_trace, corrupted_probability, subject_span
from lfm_ref.hooks import get_module, linear_weight


@pytest.fixture(scope="module")
def request_(world):
    return world.edit_requests(n=4, seed=5, relation="profession")[0]


@pytest.fixture(scope="module")
def texts(world):
    return world.corpus()[:400]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _moved(model, state):
    return [k for k, v in model.state_dict().items() if not torch.equal(state[k], v)]


def _p(model, tok, prompt, target):
    return lm.next_token_logits(model, tok, [prompt])[0].softmax(-1)[lm.target_ids(tok, [target])].item()


def _small_gpt2(tok):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=3, n_embd=48, n_head=2,
                                       n_positions=64))
    return model.eval()


# ----- positions -----------------------------------------------------------------------------------
def test_subject_positions_in_a_word_level_prompt(tiny_gpt):
    _, tok = tiny_gpt
    prompt = "The profession of Kamfer Daldal is"  # <bos> The profession of Kamfer Daldal is
    assert subject_last_token(tok, prompt, "Kamfer Daldal") == 5
    assert subject_span(tok, prompt, "Kamfer Daldal") == (4, 6)
    with pytest.raises(ValueError, match="not found"):
        subject_last_token(tok, prompt, "Nobody Here")


# ----- causal tracing (ROME, section 2.1) -----------------------------------------------------------
def test_tracing_without_noise_or_with_a_whole_layer_restored_is_the_clean_run(tiny_gpt, request_):
    model, tok = tiny_gpt
    r = request_
    clean = _p(model, tok, r.prompt, r.target_true)
    args = (model, tok, r.prompt, r.subject, r.target_true)
    assert corrupted_probability(*args, noise=0.0) == pytest.approx(clean, abs=1e-6)
    T = len(tok(r.prompt)["input_ids"])
    corrupted = corrupted_probability(*args)
    assert corrupted < clean - 0.1  # the noise hides who the prompt is about
    for layer in range(4):  # everything after a restored block output sees clean inputs
        p = corrupted_probability(*args, restore=[(layer, t) for t in range(T)])
        assert p == pytest.approx(clean, abs=1e-5)


def test_causal_trace_shape_and_the_last_layer_at_the_last_token(tiny_gpt, request_):
    model, tok = tiny_gpt
    r = request_
    trace = causal_trace(model, tok, r.prompt, r.subject, r.target_true, samples=4)
    T = len(tok(r.prompt)["input_ids"])
    assert trace.scores.shape == (4, T) and len(trace.tokens) == T
    # the last block's output at the last token is what the prediction reads: restoring it is clean
    assert trace.scores[3, -1].item() == pytest.approx(trace.clean, abs=1e-5)
    # tokens before the subject never saw it: restoring them changes nothing
    first, _ = trace.subject
    assert torch.allclose(trace.scores[:, :first], torch.full((4, first), trace.corrupted), atol=1e-6)
    assert torch.allclose(trace.indirect_effect(), trace.scores - trace.corrupted)


# ----- knowledge neurons (Dai et al., 2022) --------------------------------------------------------
def test_integrated_gradients_are_complete(tiny_gpt, request_):
    # sum_i Attr(w_i) = P_x(w_bar) - P_x(0): the path integral of the gradient, to the quadrature
    model, tok = tiny_gpt
    r = request_
    attr = integrated_gradients(model, tok, r.prompt, r.target_true, layer=2, steps=200)
    everyone = [(2, i) for i in range(attr.numel())]
    full = neuron_probability(model, tok, [r.prompt], [r.target_true])[0].item()
    zero = neuron_probability(model, tok, [r.prompt], [r.target_true], everyone, factor=0.0)[0].item()
    assert full == pytest.approx(_p(model, tok, r.prompt, r.target_true), abs=1e-6)
    assert attr.sum().item() == pytest.approx(full - zero, abs=0.01 * abs(full - zero) + 1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_neuron_probability_scales_only_the_predicting_token(tiny_gpt, request_):
    model, tok = tiny_gpt
    r = request_
    prompts = [r.prompt, r.paraphrases[0]]
    targets = [r.target_true] * 2
    plain = neuron_probability(model, tok, prompts, targets)
    same = neuron_probability(model, tok, prompts, targets, [(1, 3), (2, 7)], factor=1.0)
    assert torch.equal(plain, same)
    # padding: the shorter prompt is scaled at its own last token, as when it is alone
    alone = neuron_probability(model, tok, [r.prompt], targets[:1], [(2, 7), (2, 9)], factor=0.0)
    both = neuron_probability(model, tok, prompts, targets, [(2, 7), (2, 9)], factor=0.0)
    assert both[0].item() == pytest.approx(alone[0].item(), abs=1e-6)


def test_knowledge_neuron_edit_moves_only_their_value_slots(tiny_gpt, request_):
    model, tok = tiny_gpt
    r = request_
    before = _state(model)
    editor = KnowledgeNeuronEditor(layers=[2, 3], steps=8, scale=2.0)
    edit = editor.edit(model, tok, [r])
    assert editor.neurons and {layer for layer, _ in editor.neurons} <= {2, 3}
    embed = model.get_input_embeddings().weight
    old, new = lm.target_ids(tok, [r.target_true, r.target_new]).tolist()
    for layer in (2, 3):
        name = mlp_name(model, layer)
        w, w0 = linear_weight(get_module(model, name)), before[name + ".weight"].T
        cols = [i for x, i in editor.neurons if x == layer]
        expect = w0.clone()
        expect[:, cols] += 2.0 * (embed[new] - embed[old])[:, None]
        assert torch.allclose(w, expect, atol=1e-6)
    assert set(_moved(model, before)) <= {mlp_name(model, x) + ".weight" for x in (2, 3)}
    edit.restore()
    assert not _moved(model, before)


# ----- ROME (Meng et al., 2022) --------------------------------------------------------------------
def test_rank_one_update_is_eq_2_by_hand():
    g = torch.Generator().manual_seed(0)
    d, m = 5, 7
    w = torch.randn(d, m, generator=g, dtype=torch.float64)
    a = torch.randn(m, 3 * m, generator=g, dtype=torch.float64)
    c = a @ a.T / (3 * m)                                      # an SPD second moment
    k, v = torch.randn(m, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    update = rank_one_update(w, k, v, c)
    assert torch.allclose((w + update) @ k, v, rtol=1e-10)     # W' k* = v*
    assert torch.linalg.matrix_rank(update).item() == 1
    u = torch.linalg.solve(c, k)
    other = torch.randn(m, generator=g, dtype=torch.float64)
    other -= (other @ u) / (u @ u) * u                         # k^T C^{-1} k* = 0
    assert torch.allclose(update @ other, torch.zeros(d, dtype=torch.float64), atol=1e-12)
    # without C (EasyEdit's mom2_adjustment: false) the update lies along k*
    plain = rank_one_update(w, k, v)
    assert torch.allclose(plain, torch.outer(v - w @ k, k) / (k @ k))


def test_rome_writes_v_star_at_k_star_and_restores(tiny_gpt, request_, texts):
    model, tok = tiny_gpt
    r = request_
    before = _state(model)
    layer = 1
    name = mlp_name(model, layer)
    key = mlp_keys(model, tok, [r], layer)[0]
    delta, _ = target_deltas(model, tok, [r], mlp_name(model, layer, "mlp"), steps=5)
    w0 = linear_weight(get_module(model, name)).detach().clone()
    v_star = w0 @ key + delta[0]
    edit = Rome(layer=layer, texts=texts, steps=5).edit(model, tok, [r])
    w1 = linear_weight(get_module(model, name))
    assert torch.allclose(w1 @ key, v_star, rtol=1e-4, atol=1e-4 * v_star.norm().item())
    assert torch.linalg.matrix_rank((w1 - w0).double(), rtol=1e-6).item() == 1
    assert _moved(model, before) == [name + ".weight"]
    assert all(p.grad is None for p in model.parameters()) and not model.training
    edit.restore()
    assert not _moved(model, before)


def test_rome_edit_holds_on_tiny_gpt(tiny_gpt, request_, texts):
    model, tok = tiny_gpt
    r = request_
    with Rome(layer=0, texts=texts).edit(model, tok, [r]) as edited:
        assert lm.next_token_accuracy(edited, tok, [r.prompt], [r.target_new]) == 1.0


def test_covariance_is_the_second_moment_and_singular_ones_are_refused(tiny_gpt, texts):
    model, tok = tiny_gpt
    c = key_covariance(model, tok, texts[:10], layer=1)
    from lfm_ref.hooks import capture_inputs

    batch = lm.encode(tok, texts[:10])
    with capture_inputs(model, [mlp_name(model, 1)]) as ins:
        model(**batch)
    keys = ins[mlp_name(model, 1)][batch["attention_mask"].bool()].double()
    assert torch.allclose(c, keys.T @ keys / len(keys))
    with pytest.raises(ValueError, match="damping"):
        check_invertible(torch.zeros(4, 4))
    assert torch.equal(check_invertible(torch.zeros(4, 4), damping=1.0), torch.eye(4))


def test_rome_and_memit_on_a_config_built_gpt2(world, texts):
    tok = world.tokenizer()
    model = _small_gpt2(tok)
    before = _state(model)
    requests = world.edit_requests(n=2, seed=0)
    for editor, batch in ((Rome(layer=1, texts=texts, steps=3), requests[:1]),
                          (Memit(layers=[0, 1], texts=texts, steps=3), requests)):
        edit = editor.edit(model, tok, batch)
        assert _moved(model, before)
        edit.restore()
        assert not _moved(model, before)


# ----- MEMIT (Meng et al., 2023) -------------------------------------------------------------------
def test_memit_update_is_the_least_squares_solution_and_rome_in_the_limit():
    g = torch.Generator().manual_seed(1)
    d, m, n = 4, 6, 3
    w = torch.randn(d, m, generator=g, dtype=torch.float64)
    a = torch.randn(m, 4 * m, generator=g, dtype=torch.float64)
    c = a @ a.T / (4 * m)
    keys, res = torch.randn(n, m, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    lam = 0.5
    delta = memit_update(w, keys, res, c, lam)
    # the normal equations of min ||Delta K^T - R^T||^2 + lam tr(Delta C Delta^T)
    assert torch.allclose(delta @ (lam * c + keys.T @ keys), res.T @ keys, atol=1e-10)
    # one key: ROME's update times s / (1 + s), s = k^T (lam C)^{-1} k (Sherman-Morrison)
    k, v = keys[0], w @ keys[0] + res[0]
    s = k @ torch.linalg.solve(lam * c, k)
    one = memit_update(w, k[None], res[:1], c, lam)
    assert torch.allclose(one, rank_one_update(w, k, v, c) * s / (1 + s), atol=1e-10)


def test_memit_with_one_layer_and_one_edit_is_rome(tiny_gpt, request_, texts):
    # the same delta (the block output and the MLP output differ by the residual, which delta does
    # not see), the same key, the same covariance: MEMIT = ROME * s / (1 + s), and ~ROME as lam -> 0
    model, tok = tiny_gpt
    name = mlp_name(model, 1)
    w0 = linear_weight(get_module(model, name)).detach().clone()
    c = key_covariance(model, tok, texts, 1)
    with Rome(layer=1, covariance=c, steps=5).edit(model, tok, [request_]):
        rome = linear_weight(get_module(model, name)).detach() - w0
    with Memit(layers=[1], covariances=[c], mom2_weight=1e-6, steps=5).edit(model, tok, [request_]):
        memit = linear_weight(get_module(model, name)).detach() - w0
    # both rank one along u = C^{-1} k*; their left factors, the optimised deltas, agree to float
    # noise, which Adam's first, sign-like step turns into small differences in tiny coordinates
    (u1, s1, v1), (u2, s2, v2) = (torch.linalg.svd(x.double()) for x in (rome, memit))
    assert s1[1] < 1e-6 * s1[0] and s2[1] < 1e-6 * s2[0]
    assert abs(v1[0] @ v2[0]).item() > 1 - 1e-9      # the same key direction C^{-1} k*
    assert abs(u1[:, 0] @ u2[:, 0]).item() > 0.999   # the same delta, to float noise
    assert s2[0].item() == pytest.approx(s1[0].item(), rel=1e-2)


def test_memit_batch_restores_and_moves_only_its_layers(tiny_gpt, world, texts):
    model, tok = tiny_gpt
    before = _state(model)
    requests = world.edit_requests(n=5, seed=3, relation="profession")
    edit = Memit(layers=[0, 1], texts=texts, steps=10).edit(model, tok, requests)
    assert sorted(_moved(model, before)) == [mlp_name(model, x) + ".weight" for x in (0, 1)]
    edit.restore()
    assert not _moved(model, before)


@pytest.mark.gpu
def test_locate_and_edit_on_cuda(world, texts):
    from lfm_ref import zoo

    model, tok = zoo.load("tiny-gpt", device="cuda")
    before = _state(model)
    r = world.edit_requests(n=2, seed=0, relation="profession")
    trace = causal_trace(model, tok, r[0].prompt, r[0].subject, r[0].target_true, samples=2)
    assert trace.scores.shape[0] == 4
    assert integrated_gradients(model, tok, r[0].prompt, r[0].target_true, 2, steps=4).shape == (512,)
    for editor, batch in ((Rome(layer=0, texts=texts, steps=3), r[:1]),
                          (Memit(layers=[0, 1], texts=texts, steps=3), r),
                          (KnowledgeNeuronEditor(layers=[2], steps=4), r[:1])):
        editor.edit(model, tok, batch).restore()
        assert not _moved(model, before)
