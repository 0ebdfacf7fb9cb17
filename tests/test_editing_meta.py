"""The meta-learned editors of chapter 19. MEND (Mitchell et al., 2022): the editor network, its
update's rank, the untrained MEND as one gradient step, meta-training that lowers its loss.
KnowledgeEditor (De Cao et al., 2021): Eq. 4 by hand, meta-training that lowers its edit loss."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref import lm
from lfm_ref.editing.finetune import mlp_name
from lfm_ref.editing.mend import Mend, MendNet, gradient_factors
from lfm_ref.hooks import get_module, linear_weight


@pytest.fixture(scope="module")
def requests(world):
    return world.edit_requests(n=6, seed=7, relation="profession")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _moved(model, state):
    return [k for k, v in model.state_dict().items() if not torch.equal(state[k], v)]


def test_mend_net_is_the_identity_at_init_and_scale_equivariant():
    g = torch.Generator().manual_seed(0)
    net = MendNet(5, 3, rank=2)
    u, d = torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g)
    u2, d2 = net(u, d)
    assert torch.allclose(u2, u, atol=1e-6) and torch.allclose(d2, d, atol=1e-6)
    torch.nn.init.normal_(net.u1.weight, generator=g), torch.nn.init.normal_(net.u2.weight, generator=g)
    a, b = net(u, d)
    a3, b3 = net(3 * u, 0.5 * d)  # each part is normalised by its RMS and scaled back
    assert torch.allclose(a3, 3 * a, atol=1e-5) and torch.allclose(b3, 0.5 * b, atol=1e-5)


def test_gradient_factors_sum_to_the_weight_gradient(tiny_gpt, requests):
    # Eq. 1: grad_W L = sum_t delta_t u_t^T
    model, tok = tiny_gpt
    name = mlp_name(model, 2)
    u, d = gradient_factors(model, tok, requests[:2], [name])[name]
    batch = lm.encode(tok, [r.prompt for r in requests[:2]])
    last = batch["attention_mask"].sum(1) - 1
    target = lm.target_ids(tok, [r.target_new for r in requests[:2]])
    weight = get_module(model, name).weight
    logits = model(**batch).logits[torch.arange(2), last]
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, target, reduction="sum"), weight)
    assert torch.allclose(d.T @ u, grad.T, atol=1e-5)   # Conv1D stores W^T
    assert all(p.grad is None for p in model.parameters())


def test_untrained_mend_is_one_gradient_step_and_its_update_has_the_factors_rank(tiny_gpt, requests):
    model, tok = tiny_gpt
    mend = Mend(layers=[3], alpha=0.1)
    mend._build(model)
    name = mlp_name(model, 3)
    upd = mend.updates(model, tok, requests[:1])[name]
    u, d = gradient_factors(model, tok, requests[:1], [name])[name]
    assert torch.allclose(upd, -0.1 * d.T @ u, atol=1e-6)          # W~ = W - alpha grad_W L
    torch.nn.init.normal_(mend.nets[name.replace(".", "_")].u1.weight, std=0.1)
    upd = mend.updates(model, tok, requests[:1])[name].detach()
    n_tokens = len(u)
    # float32 sums of n_tokens rank-one terms: the rest of the spectrum is rounding
    assert torch.linalg.matrix_rank(upd.double(), rtol=1e-4).item() <= n_tokens < min(upd.shape)


def test_edit_before_meta_training_is_refused(tiny_gpt, requests):
    model, tok = tiny_gpt
    with pytest.raises(ValueError, match="meta_train"):
        Mend(layers=[3]).edit(model, tok, requests[:1])


def test_meta_training_lowers_its_loss_and_edit_restores(tiny_gpt, world, requests):
    model, tok = tiny_gpt
    before = _state(model)
    train = world.edit_requests(n=40, seed=8, relation="profession")
    local = [f.prompt(0) for f in world.split("train")[:50]]
    mend = Mend(layers=[2, 3], alpha=1e-2)
    losses = mend.meta_train(model, tok, train, local, steps=60, batch_size=4, lr=1e-3)
    assert sum(losses[-15:]) / 15 < 0.8 * sum(losses[:15]) / 15
    assert not _moved(model, before) and all(p.grad is None for p in model.parameters())
    edit = mend.edit(model, tok, requests[:3])
    assert sorted(_moved(model, before)) == [mlp_name(model, x) + ".weight" for x in (2, 3)]
    edit.restore()
    assert not _moved(model, before)


def test_mend_on_a_config_built_gpt2(world, requests):
    tok = world.tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=3, n_embd=48, n_head=2,
                                       n_positions=64)).eval()
    before = _state(model)
    mend = Mend(layers=[1, 2])
    mend.meta_train(model, tok, requests, [r.prompt for r in requests], steps=2, batch_size=2)
    w = linear_weight(get_module(model, mlp_name(model, 2)))
    assert w.shape == (48, 192)
    mend.edit(model, tok, requests[:2]).restore()
    assert not _moved(model, before)


@pytest.mark.gpu
def test_mend_on_cuda(world, requests):
    from lfm_ref import zoo

    model, tok = zoo.load("tiny-gpt", device="cuda")
    before = _state(model)
    mend = Mend(layers=[3])
    mend.meta_train(model, tok, requests, [r.prompt for r in requests], steps=3, batch_size=2)
    mend.edit(model, tok, requests[:2]).restore()
    assert not _moved(model, before)
    ke = KnowledgeEditor(layers=[3], hidden=8)
    ke.meta_train(model, tok, requests, [r.prompt for r in requests], steps=3)
    ke.edit(model, tok, requests[:1]).restore()
    assert not _moved(model, before)


# ----- KnowledgeEditor (De Cao et al., 2021) -------------------------------------------------------
from lfm_ref.editing.knowledge_editor import KnowledgeEditor, UpdateHead  # noqa: E402


def test_update_head_is_eq_4_by_hand():
    g = torch.Generator().manual_seed(0)
    head = UpdateHead(cond=3, d_out=4, d_in=5, hidden=6)
    h, grad = torch.randn(3, generator=g), torch.randn(4, 5, generator=g)
    alpha, beta, gamma, delta, eta = head.net(h).split((4, 4, 5, 5, 1))
    expect = torch.sigmoid(eta) * (torch.sigmoid(alpha)[:, None] * gamma[None] * grad
                                   + torch.sigmoid(beta)[:, None] * delta[None])
    assert torch.allclose(head(h, grad), expect, atol=1e-6)


def test_knowledge_editor_meta_trains_on_tiny_gpt_and_restores(tiny_gpt, world, requests):
    model, tok = tiny_gpt
    before = _state(model)
    train = world.edit_requests(n=40, seed=8, relation="profession")
    local = [f.prompt(0) for f in world.split("train")[:50]]
    ke = KnowledgeEditor(layers=[2, 3], hidden=32)
    with pytest.raises(ValueError, match="meta_train"):
        ke.edit(model, tok, requests[:1])
    history = ke.meta_train(model, tok, train, local, steps=60, lr=3e-3)
    first = sum(e for e, _ in history[:15]) / 15
    last = sum(e for e, _ in history[-15:]) / 15
    assert last < 0.8 * first  # the edit loss falls as the hypernetwork learns
    assert ke.multiplier >= 0
    assert not _moved(model, before) and all(p.grad is None for p in model.parameters())
    edit = ke.edit(model, tok, requests[:1])
    assert sorted(_moved(model, before)) == [mlp_name(model, x) + ".weight" for x in (2, 3)]
    edit.restore()
    assert not _moved(model, before)


def test_knowledge_editor_on_a_config_built_gpt2(world, requests):
    tok = world.tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=3, n_embd=48, n_head=2,
                                       n_positions=64)).eval()
    before = _state(model)
    ke = KnowledgeEditor(layers=[1, 2], hidden=8)
    ke.meta_train(model, tok, requests, [r.prompt for r in requests], steps=2)
    ke.edit(model, tok, requests[:1]).restore()
    assert not _moved(model, before)


# ----- saving, loading and the zoo's meta-trained editors ---------------------------------------
from lfm_ref.editing import apply_updates, load_editor, save_editor  # noqa: E402


@pytest.mark.parametrize("kind", ["mend", "ke"])
def test_a_saved_editor_loads_back_to_the_same_updates(tiny_gpt, requests, tmp_path, kind):
    model, tok = tiny_gpt
    editor = Mend(layers=[2, 3], rank=4, seed=3) if kind == "mend" else KnowledgeEditor(layers=[3], hidden=8)
    editor.meta_train(model, tok, requests, [r.prompt for r in requests], steps=3)
    save_editor(editor, tmp_path / kind)
    loaded = load_editor(tmp_path / kind, model)
    assert type(loaded) is type(editor) and loaded.config() == editor.config()
    request = requests[:1] if kind == "ke" else requests[:2]
    with torch.no_grad():
        want, got = editor.updates(model, tok, request), loaded.updates(model, tok, request)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_load_editor_says_what_it_expected(tiny_gpt, world, requests, tmp_path):
    model, tok = tiny_gpt
    with pytest.raises(ValueError, match="save_editor"):
        load_editor(tmp_path, model)
    mend = Mend(layers=[3], rank=2)
    mend.meta_train(model, tok, requests, [r.prompt for r in requests], steps=1, batch_size=2)
    save_editor(mend, tmp_path / "mend")
    other = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=4, n_embd=48, n_head=2,
                                       n_positions=64)).eval()
    with pytest.raises(ValueError, match="other layer shapes"):
        load_editor(tmp_path / "mend", other)


def test_apply_updates_writes_the_update_in_the_linear_layout_and_restores(world, requests):
    tok = world.tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=16, n_head=2,
                                       n_positions=32)).eval()  # Conv1D: the weight is stored as W^T
    before = _state(model)
    name = mlp_name(model, 1)
    update = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))  # (d_out, d_in)
    edit = apply_updates(model, {name: update}, "test", requests[:1])
    assert torch.equal(get_module(model, name).weight, before[name + ".weight"] + update.T)
    assert _moved(model, before) == [name + ".weight"]
    edit.restore()
    assert not _moved(model, before)


def test_mend_learns_its_steps_at_their_own_rate(tiny_gpt, requests):
    model, tok = tiny_gpt
    mend = Mend(layers=[2, 3], alpha=0.1)
    mend.meta_train(model, tok, requests, [r.prompt for r in requests], steps=3, batch_size=2, lr=1e-9)
    # Adam moves each parameter by about its rate per step: alpha by ~0.1 (the paper's lr_lr =
    # edit_lr), the networks, at 1e-9, not visibly
    assert (mend.alpha - 0.1).abs().max() > 0.05
    assert all(p.abs().max() < 1e-6 for p in (mend.nets[k].u1.weight for k in mend.nets))


def test_editor_requests_are_disjoint_and_checked():
    from lfm_ref import zoo

    train, test, locality = zoo.editor_requests(0)
    assert (len(train), len(test), len(locality)) == (110, 20, 200)
    subjects = {r.subject for r in train}
    assert not subjects & {r.subject for r in test}
    assert not subjects & {p for r in test for p, _ in r.neighbours}  # neighbours are other people
    assert all(r.subject not in p for r in train + test for p in locality)
    with pytest.raises(ValueError, match="seeds"):
        zoo.editor_requests(7)


@pytest.mark.parametrize("name", ["tiny-gpt-mend-0", "tiny-gpt-ke-0"])
def test_the_zoo_editors_give_the_scores_their_cards_record(tiny_gpt, name):
    from lfm_ref import zoo
    from lfm_ref.editing import evaluate_edits

    model, tok = tiny_gpt
    editor = zoo.load(name, device="cpu")
    assert isinstance(editor, Mend if "mend" in name else KnowledgeEditor)
    _, test, _ = zoo.editor_requests(0)
    scores = []
    for r in test:
        with editor.edit(model, tok, [r]) as edited:
            scores.append(evaluate_edits(edited, tok, [r]).row())
    card = zoo.info(name)["metrics"]
    for col, key in enumerate(("reliability", "generalisation", "locality")):
        assert sum(s[col] for s in scores) / len(scores) == pytest.approx(card[f"test_{key}"], abs=1e-9)
    assert card["test_reliability"] >= 0.8  # meta-training made an editor (chapter 19 tests the rest)
