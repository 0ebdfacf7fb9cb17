"""Soft prompts, P-tuning, prefix tuning and PEZ (Part I, chapter 3): defining properties, PEFT as the
peer for prompt tuning and prefix tuning, errors."""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref import fit
from lfm_ref.tuning import HardPromptPEZ, PrefixTuning, PromptTuning, few_shot_prompt

X = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(0))
MASK = torch.ones_like(X).index_fill_(1, torch.tensor([8, 9]), 0)  # right padding in every row


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()


def test_a_soft_prompt_of_length_p_lengthens_the_sequence_by_p_and_only_the_prompt_trains():
    model = PromptTuning(tiny_gpt2(), n_tokens=5)
    out = model(X, MASK, output_hidden_states=True)
    assert out.hidden_states[0].shape[1] == X.shape[1] + 5
    assert out.logits.shape[:2] == X.shape  # logits for the input positions only
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_embeddings"]


def test_prompt_tuning_initialises_from_the_vocabulary_and_equals_prepending_those_tokens():
    base = tiny_gpt2()
    ids = torch.tensor([7, 3, 11])
    model = PromptTuning(copy.deepcopy(base), n_tokens=3, init_ids=ids)
    assert torch.equal(model.prompt_embeddings, base.transformer.wte.weight[ids])
    hard = torch.cat([ids.expand(3, -1), X], dim=1)
    expected = base(hard, attention_mask=torch.cat([torch.ones(3, 3, dtype=MASK.dtype), MASK], 1)).logits[:, 3:]
    assert torch.allclose(model(X, MASK).logits, expected, atol=1e-5)


def test_pez_forward_uses_real_tokens_and_its_gradient_reaches_the_soft_prompt():
    base = tiny_gpt2()
    model = HardPromptPEZ(copy.deepcopy(base), n_tokens=4)
    with torch.no_grad():
        model.prompt_embeddings.add_(0.01 * torch.randn_like(model.prompt_embeddings))  # off the vocabulary
    ids = model.nearest_ids()
    hard = PromptTuning(copy.deepcopy(base), n_tokens=4, init_ids=ids)
    assert torch.allclose(model(X, MASK).logits, hard(X, MASK).logits, atol=1e-6)
    model(X, MASK, labels=X).loss.backward()
    assert model.prompt_embeddings.grad is not None and model.prompt_embeddings.grad.abs().sum() > 0


def test_prefix_tuning_leaves_base_weights_untouched_and_acts_in_every_layer():
    base = tiny_gpt2()
    model = PrefixTuning(copy.deepcopy(base), n_tokens=4, encoder_hidden=16)
    before = copy.deepcopy(base.state_dict())
    data = {"input_ids": X, "attention_mask": MASK, "labels": X.masked_fill(MASK == 0, -100)}
    from lfm_ref.train import DictDataset
    fit(model, DictDataset(data), steps=3, lr=1e-2, batch_size=3)
    assert all(torch.equal(model.model.state_dict()[k], v) for k, v in before.items())
    assert model.key_values().shape == (2, 2, 2, 4, 16)  # layers, key/value, heads, prefix, head_dim
    assert not torch.allclose(model(X, MASK).logits, base(X, attention_mask=MASK).logits, atol=1e-4)
    direct = PrefixTuning(copy.deepcopy(base), n_tokens=4, encoder_hidden=None)
    assert direct.prefix.shape == (4, 2 * 2 * 32)


def test_p_tuning_reparameterises_the_prompt_with_an_mlp():
    model = PromptTuning(tiny_gpt2(), n_tokens=4, encoder_hidden=16)
    prompt = model.prompt()
    assert prompt.shape == (4, 32)
    assert torch.allclose(prompt, model.prompt_embeddings + model.encoder(model.prompt_embeddings))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"prompt_embeddings", "encoder"}


def test_prompt_tuning_matches_peft():
    peft = pytest.importorskip("peft")
    base = tiny_gpt2()
    ours = PromptTuning(copy.deepcopy(base), n_tokens=4, seed=3)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.prompt_embeddings)
    labels = X.masked_fill(MASK == 0, -100)
    mine, peer = ours(X, MASK, labels=labels), theirs(input_ids=X, attention_mask=MASK, labels=labels)
    assert torch.allclose(mine.logits, peer.logits[:, 4:], atol=1e-5)  # PEFT also returns the virtual positions
    assert torch.allclose(mine.loss, peer.loss, atol=1e-6)


def test_prefix_tuning_matches_peft():
    peft = pytest.importorskip("peft")
    base = tiny_gpt2()
    ours = PrefixTuning(copy.deepcopy(base), n_tokens=4, encoder_hidden=16)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16)).eval()
    encoder = theirs.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight.copy_(ours.prefix)
        for i in (0, 2):
            encoder.transform[i].weight.copy_(ours.encoder[i].weight)
            encoder.transform[i].bias.copy_(ours.encoder[i].bias)
    labels = X.masked_fill(MASK == 0, -100)
    mine, peer = ours(X, MASK, labels=labels), theirs(input_ids=X, attention_mask=MASK, labels=labels)
    assert torch.allclose(mine.logits, peer.logits, atol=1e-5)
    assert torch.allclose(mine.loss, peer.loss, atol=1e-6)


def test_few_shot_prompt():
    demos = [("Fill in : A was born in ___ . Answer :", "Rome"), ("Fill in : B was born in ___ . Answer :", "Oslo")]
    text = few_shot_prompt(demos, "Fill in : C was born in ___ . Answer :")
    assert text == ("Fill in : A was born in ___ . Answer : Rome Fill in : B was born in ___ . Answer : Oslo "
                    "Fill in : C was born in ___ . Answer :")
    assert few_shot_prompt([], "q") == "q"


def test_prompt_bad_input():
    with pytest.raises(ValueError, match="must be an int >= 1, got 0"):
        PromptTuning(tiny_gpt2(), n_tokens=0)
    with pytest.raises(ValueError, match="no room in the model's context of 32"):
        PrefixTuning(tiny_gpt2(), n_tokens=32)
    model = PromptTuning(tiny_gpt2(), n_tokens=8)
    with pytest.raises(ValueError, match="8 virtual tokens \\+ an input of 30 tokens exceed the model's context of 32"):
        model(torch.zeros(1, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="init_ids"):
        PromptTuning(tiny_gpt2(), n_tokens=2, init_ids=torch.tensor([99]))
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        PromptTuning(torch.nn.Linear(2, 2), n_tokens=2)


@pytest.mark.gpu
def test_prompts_on_cuda():
    base = tiny_gpt2().cuda()
    x, mask = X.cuda(), MASK.cuda()
    for model in (PromptTuning(copy.deepcopy(base), 4), PrefixTuning(copy.deepcopy(base), 4),
                  HardPromptPEZ(copy.deepcopy(base), 4)):
        out = model(x, mask, labels=x)
        out.loss.backward()
        assert out.logits.is_cuda and out.logits.shape[:2] == x.shape


def test_prefix_tuning_passes_its_cache_without_a_deprecation_warning(recwarn):
    """transformers 5 renames ``past_key_values`` to ``cache`` (the old name goes in 5.40); 4.x keeps
    the old name. PrefixTuning uses whichever the model's forward takes, so no FutureWarning."""
    import warnings

    model = PrefixTuning(tiny_gpt2(), n_tokens=4, encoder_hidden=16)
    warnings.simplefilter("always")
    out = model(X, MASK, labels=X)
    out.loss.backward()
    caching = [w for w in recwarn if issubclass(w.category, FutureWarning) and "past_key_values" in str(w.message)]
    assert not caching, [str(w.message) for w in caching]
    assert model._cache_arg in ("cache", "past_key_values")


def test_prompt_wrappers_keep_the_models_mode_and_the_global_rng():
    base = tiny_gpt2().train()
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    model = PromptTuning(base, n_tokens=4, seed=1)  # its own generator for the initial token ids
    assert torch.equal(torch.rand(2), expected)
    model.eval()
    with torch.no_grad():
        model(X, MASK)
    assert not base.training  # the wrapped model follows the wrapper, as any submodule does
    model.train()
    assert all(m.training for m in base.modules())


def test_prompt_inside_the_input_replaces_the_placeholders_in_order():
    """P-tuning's placement (Liu et al., 2021, LAMA: ``x [P] y``): the k-th placeholder's embedding
    becomes P_k; positions, mask and labels stay those of the input, and only P gets a gradient."""
    base = tiny_gpt2()
    model = PromptTuning(copy.deepcopy(base), n_tokens=2, placeholder_id=1, seed=0)
    ids = torch.tensor([[5, 6, 1, 1, 7], [8, 1, 1, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    out = model(ids, mask, labels=ids.masked_fill(mask == 0, -100))
    table = base.get_input_embeddings().weight.detach()
    embeds = table[ids].clone()
    embeds[0, 2:4] = model.prompt().detach()
    embeds[1, 1:3] = model.prompt().detach()
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, attention_mask=mask).logits
    assert out.logits.shape[:2] == ids.shape
    assert torch.allclose(out.logits, expected, atol=1e-5)
    out.loss.backward()
    assert model.prompt_embeddings.grad is not None and model.prompt_embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.parameters())
