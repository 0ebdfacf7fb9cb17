"""LoRA (Part I): defining properties on nn.Linear and GPT-2's Conv1D, PEFT as the peer, errors."""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref.tuning import (
    LoraConfig,
    LoraLinear,
    inject_lora,
    lora_state_dict,
    merge_layers,
    unload_layers,
    unmerge_layers,
    wrapped_layers,
)
from lfm_ref.zoo.models import TinyViT


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()


def randomize_b(model, seed=1):
    # B starts at zero; give it values so that the adapter changes the function
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wrapped_layers(model, LoraLinear).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=g))


@pytest.fixture(params=["vit", "gpt2"])
def adapted(request):
    if request.param == "vit":
        torch.manual_seed(0)
        base = TinyViT(dim=32, depth=2, heads=2).eval()
        x = (torch.rand(4, 1, 8, 8),)
        config = LoraConfig(target_modules=["qkv", "proj", "head"], r=4, alpha=8)
        run = lambda m: m(*x)  # noqa: E731
    else:
        base = tiny_gpt2()
        x = torch.randint(0, 50, (3, 10))
        config = LoraConfig(target_modules=["c_attn", "c_proj", "c_fc"], r=4, alpha=8)
        run = lambda m: m(x).logits  # noqa: E731
    model = inject_lora(copy.deepcopy(base), config)
    return base, model, run


def test_lora_starts_at_the_pretrained_model_and_trains_only_the_adapter(adapted):
    base, model, run = adapted
    assert torch.allclose(run(model), run(base), atol=1e-6)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    layers = wrapped_layers(model, LoraLinear).values()
    expected = sum(layer.r * (layer.lora_A.shape[1] + layer.lora_B.shape[0]) for layer in layers)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert set(lora_state_dict(model)) == trainable


def test_merge_equals_the_unmerged_forward_and_unmerge_restores_the_weights(adapted):
    base, model, run = adapted
    randomize_b(model)
    before = {n: layer.base.weight.clone() for n, layer in wrapped_layers(model, LoraLinear).items()}
    unmerged = run(model)
    assert not torch.allclose(unmerged, run(base), atol=1e-4)
    merge_layers(model)
    assert torch.allclose(run(model), unmerged, atol=1e-5)
    unmerge_layers(model)
    layers = wrapped_layers(model, LoraLinear).items()
    assert all(torch.allclose(layer.base.weight, before[n], atol=1e-6) for n, layer in layers)
    assert torch.allclose(run(model), unmerged, atol=1e-5)


def test_unload_with_and_without_merging(adapted):
    base, model, run = adapted
    randomize_b(model)
    adapted_out = run(model)
    dropped = unload_layers(copy.deepcopy(model), merge=False)
    assert not any(isinstance(m, LoraLinear) for m in dropped.modules())
    assert torch.allclose(run(dropped), run(base), atol=1e-6)
    merged = unload_layers(model, merge=True)
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    assert torch.allclose(run(merged), adapted_out, atol=1e-5)
    assert merged.state_dict().keys() == base.state_dict().keys()


# ----- peer: PEFT, the same weights in both, outputs and greedy decoding compared -------------------------
def _to_peft(ours, peft_model):
    theirs = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, layer in wrapped_layers(ours, LoraLinear).items():
            theirs[f"base_model.model.{name}.lora_A.default.weight"].copy_(layer.lora_A)
            theirs[f"base_model.model.{name}.lora_B.default.weight"].copy_(layer.lora_B)


def test_lora_matches_peft_on_gpt2_conv1d():
    peft = pytest.importorskip("peft")
    base = tiny_gpt2()
    targets = ["c_attn", "c_proj", "c_fc"]
    ours = inject_lora(copy.deepcopy(base), LoraConfig(target_modules=targets, r=4, alpha=8))
    randomize_b(ours)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                                      fan_in_fan_out=True, lora_dropout=0.0)).eval()
    _to_peft(ours, theirs)
    assert_matches_peft(ours, theirs, torch.randint(0, 50, (3, 10)))


def assert_matches_peft(ours, theirs, x):
    """The PEFT peer check of a layer method on GPT-2: equal logits, equal greedy decoding, and equal
    weights once both are merged and unloaded."""
    assert torch.allclose(ours(x).logits, theirs(x).logits, atol=1e-5)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(x[:1], **kwargs), theirs.generate(input_ids=x[:1], **kwargs))
    ours_merged, theirs_merged = unload_layers(ours), theirs.merge_and_unload()
    for key, value in theirs_merged.state_dict().items():
        assert torch.allclose(ours_merged.state_dict()[key], value, atol=1e-6), key


def test_lora_matches_peft_on_linear_layers():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = TinyViT(dim=32, depth=2, heads=2).eval()
    ours = inject_lora(copy.deepcopy(base), LoraConfig(target_modules=["qkv", "mlp.0"], r=2, alpha=6))
    randomize_b(ours)
    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["qkv", "mlp.0"])
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    _to_peft(ours, theirs)
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_target_modules_as_a_regular_expression_as_in_peft():
    base = tiny_gpt2()
    model = inject_lora(copy.deepcopy(base), LoraConfig(target_modules=r".*\.0\.(attn\.c_attn|mlp\.c_fc)", r=2))
    assert sorted(wrapped_layers(model, LoraLinear)) == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]
    by_suffix = inject_lora(copy.deepcopy(base), LoraConfig(target_modules=["c_attn"], r=2))
    by_regex = inject_lora(copy.deepcopy(base), LoraConfig(target_modules=r".*c_attn", r=2))
    assert sorted(wrapped_layers(by_suffix, LoraLinear)) == sorted(wrapped_layers(by_regex, LoraLinear))


def test_lora_bad_input():
    base = tiny_gpt2()
    with pytest.raises(ValueError, match="its linear layers are named .*c_attn"):
        inject_lora(base, LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="non-empty list"):
        LoraConfig(target_modules=[])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        LoraConfig(target_modules="c_attn[")
    with pytest.raises(ValueError, match="no module of GPT2LMHeadModel matches"):
        inject_lora(copy.deepcopy(base), LoraConfig(target_modules=r".*\.q_proj"))
    with pytest.raises(ValueError, match="must be an int >= 1, got 0"):
        LoraConfig(target_modules=["c_attn"], r=0)
    with pytest.raises(ValueError, match="exceeds"):
        inject_lora(copy.deepcopy(base), LoraConfig(target_modules=["c_attn"], r=64))
    model = inject_lora(copy.deepcopy(base), LoraConfig(target_modules=["c_attn"], r=2))
    with pytest.raises(ValueError, match="already adapted"):
        inject_lora(model, LoraConfig(target_modules=["c_fc"], r=2))
    merge_layers(model)
    with pytest.raises(ValueError, match="already merged"):
        merge_layers(model)
    with pytest.raises(ValueError, match="no WrappedLayer layers: inject them first"):
        merge_layers(base)
    with pytest.raises(TypeError, match="nn.Linear or GPT-2"):
        LoraLinear(torch.nn.Conv2d(1, 1, 3))


@pytest.mark.gpu
def test_lora_on_cuda():
    base = tiny_gpt2().cuda()
    model = inject_lora(copy.deepcopy(base), LoraConfig(target_modules=["c_attn"], r=2))
    randomize_b(model)
    x = torch.randint(0, 50, (2, 6), device="cuda")
    out = model(x).logits
    merge_layers(model)
    assert torch.allclose(model(x).logits, out, atol=1e-4)


def test_one_api_merges_unmerges_and_unloads_every_layer_method():
    """merge_layers / unmerge_layers / unload_layers serve LoRA and (IA)^3 alike, by kind or all at once."""
    from lfm_ref.tuning import IA3Config, IA3Layer, inject_ia3

    base = tiny_gpt2()
    x = torch.randint(0, 50, (2, 6))
    model = inject_lora(copy.deepcopy(base), LoraConfig(["c_attn"], r=2, alpha=4))
    randomize_b(model)
    expected = model(x).logits
    assert set(wrapped_layers(model)) == set(wrapped_layers(model, LoraLinear))
    assert torch.allclose(merge_layers(model, LoraLinear)(x).logits, expected, atol=1e-5)
    assert all(layer.merged for layer in wrapped_layers(model).values())
    with pytest.raises(ValueError, match="no IA3Layer layers"):
        merge_layers(model, IA3Layer)
    plain = unload_layers(unmerge_layers(model), merge=True)
    assert not any(isinstance(m, LoraLinear) for m in plain.modules())
    assert torch.allclose(plain(x).logits, expected, atol=1e-5)
    ia3 = inject_ia3(copy.deepcopy(base), IA3Config(["c_attn"]))
    assert torch.allclose(unload_layers(ia3, IA3Layer)(x).logits, base(x).logits, atol=1e-6)
    with pytest.raises(TypeError, match="kind must be a WrappedLayer class"):
        wrapped_layers(base, torch.nn.Linear)
