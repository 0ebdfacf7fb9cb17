"""(IA)^3, Houlsby adapters, Compacter and AdapterFusion (Part I): defining properties, PEFT as the peer
for (IA)^3, errors."""
import copy

import pytest
import torch
from test_tuning_lora import assert_matches_peft, tiny_gpt2  # shared with the LoRA tests

from lfm_ref.tuning import (
    AdapterConfig,
    AdapterFusion,
    IA3Config,
    IA3Layer,
    PHMLinear,
    adapter_modules,
    inject_adapter_fusion,
    inject_adapters,
    inject_ia3,
    merge_layers,
    trainable_state_dict,
    unload_layers,
    unmerge_layers,
    wrapped_layers,
)
from lfm_ref.zoo.models import TinyViT

IA3_GPT2 = IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"])
X = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(0))


def randomize(model, seed=1, scale=0.3):
    """Move every trainable tensor away from its identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


# ----- (IA)^3 ----------------------------------------------------------------------------------------
def test_ia3_starts_at_the_base_model_and_trains_one_number_per_feature():
    base = tiny_gpt2()
    model = inject_ia3(copy.deepcopy(base), IA3_GPT2)
    assert torch.allclose(model(X).logits, base(X).logits, atol=1e-6)  # l = 1
    layers = wrapped_layers(model, IA3Layer)
    # c_attn scales its 3 * 32 outputs, the MLP's c_proj its 4 * 32 inputs
    assert {n: layer.ia3_l.numel() for n, layer in layers.items()} == {
        "transformer.h.0.attn.c_attn": 96, "transformer.h.0.mlp.c_proj": 128,
        "transformer.h.1.attn.c_attn": 96, "transformer.h.1.mlp.c_proj": 128}
    assert set(trainable_state_dict(model)) == {f"{n}.ia3_l" for n in layers}


def test_ia3_scales_outputs_and_feedforward_inputs():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    out_scale, in_scale = IA3Layer(copy.deepcopy(lin)), IA3Layer(copy.deepcopy(lin), feedforward=True)
    with torch.no_grad():
        out_scale.ia3_l.copy_(torch.tensor([2.0, 0.5, -1.0]))
        in_scale.ia3_l.copy_(torch.tensor([1.0, 0.0, 3.0, 2.0]))
    assert torch.allclose(out_scale(x), lin(x) * torch.tensor([2.0, 0.5, -1.0]))
    assert torch.allclose(in_scale(x), lin(x * torch.tensor([1.0, 0.0, 3.0, 2.0])))


@pytest.mark.parametrize("arch", ["gpt2", "vit"])
def test_ia3_merge_unmerge_unload(arch):
    if arch == "gpt2":
        base, config, run = tiny_gpt2(), IA3_GPT2, (lambda m: m(X).logits)
    else:
        torch.manual_seed(0)
        base = TinyViT(dim=32, depth=2, heads=2).eval()
        config = IA3Config(target_modules=["qkv", "mlp.2"], feedforward_modules=["mlp.2"])
        x = torch.rand(4, 1, 8, 8)
        run = lambda m: m(x)  # noqa: E731
    model = inject_ia3(copy.deepcopy(base), config)
    randomize(model)
    adapted = run(model)
    weights = {n: layer.base.weight.clone() for n, layer in wrapped_layers(model, IA3Layer).items()}
    merge_layers(model)
    assert torch.allclose(run(model), adapted, atol=1e-5)
    unmerge_layers(model)
    layers = wrapped_layers(model, IA3Layer).items()
    assert all(torch.allclose(layer.base.weight, weights[n], atol=1e-6) for n, layer in layers)
    merged = unload_layers(copy.deepcopy(model), merge=True)
    assert merged.state_dict().keys() == base.state_dict().keys()
    assert torch.allclose(run(merged), adapted, atol=1e-5)
    assert torch.allclose(run(unload_layers(model, merge=False)), run(base), atol=1e-6)


def test_ia3_matches_peft_on_gpt2():
    peft = pytest.importorskip("peft")
    base = tiny_gpt2()
    ours = inject_ia3(copy.deepcopy(base), IA3_GPT2)
    randomize(ours)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(
        target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True)).eval()
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, layer in wrapped_layers(ours, IA3Layer).items():
            peer = params[f"base_model.model.{name}.ia3_l.default"]
            peer.copy_(layer.ia3_l.view(peer.shape))
    assert_matches_peft(ours, theirs, X)


# ----- adapters, Compacter, AdapterFusion ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["houlsby", "compacter"])
def test_adapters_start_at_the_base_model_and_unload_to_it(kind):
    base = tiny_gpt2()
    model = inject_adapters(copy.deepcopy(base), AdapterConfig(["c_proj"], bottleneck=8, kind=kind, phm_dim=4))
    assert torch.allclose(model(X).logits, base(X).logits, atol=1e-6)  # W_up = 0
    assert len(adapter_modules(model)) == 4  # attention and MLP output of 2 blocks
    randomize(model)
    assert not torch.allclose(model(X).logits, base(X).logits, atol=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n for n in trainable)
    with pytest.raises(TypeError, match="cannot be merged"):
        model.transformer.h[0].attn.c_proj.merge()
    assert torch.allclose(unload_layers(model, merge=False)(X).logits, base(X).logits, atol=1e-6)


def test_houlsby_adapter_size():
    model = inject_adapters(tiny_gpt2(), AdapterConfig(["c_proj"], bottleneck=8))
    # per adapter: down 32 x 8 + 8, up 8 x 32 + 32
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 * (32 * 8 + 8 + 8 * 32 + 32)


def test_phm_weight_is_a_sum_of_kronecker_products_and_compacter_shares_its_rules():
    torch.manual_seed(0)
    rules = torch.nn.Parameter(torch.randn(2, 2, 2))
    layer = PHMLinear(6, 4, rules, rank=2)
    expected = sum(torch.kron(rules[i], layer.s[i] @ layer.t[i]) for i in range(2))
    assert torch.allclose(layer.weight(), expected, atol=1e-6)
    assert torch.linalg.matrix_rank(layer.s[0] @ layer.t[0]) <= 2
    x = torch.randn(5, 6)
    assert torch.allclose(layer(x), x @ expected + layer.bias, atol=1e-6)
    model = inject_adapters(tiny_gpt2(), AdapterConfig(["c_proj"], bottleneck=8, kind="compacter", phm_dim=4))
    shared = {id(m.rules) for m in model.modules() if isinstance(m, PHMLinear)}
    assert len(shared) == 1  # one set of rules A_i for the whole model
    houlsby = inject_adapters(tiny_gpt2(), AdapterConfig(["c_proj"], bottleneck=8))
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(model) < count(houlsby) / 2


def test_adapter_fusion_starts_as_the_average_of_the_adapters_and_trains_only_the_fusion():
    base = tiny_gpt2()
    sets = []
    for seed in (1, 2, 3):
        adapted = inject_adapters(copy.deepcopy(base), AdapterConfig(["c_proj"], bottleneck=8))
        randomize(adapted, seed=seed)
        sets.append(adapter_modules(adapted))
    fused = inject_adapter_fusion(copy.deepcopy(base), sets)
    layer = fused.transformer.h[0].mlp.c_proj
    assert isinstance(layer, AdapterFusion)
    x = torch.randn(2, 5, 128)
    h = layer.base(x)
    average = torch.stack([s["transformer.h.0.mlp.c_proj"](h) for s in sets]).mean(0)
    assert torch.allclose(layer(x), average, atol=1e-5)  # W_Q = 0: uniform attention; W_V = I
    assert torch.allclose(layer.last_weights, torch.full((2, 5, 3), 1 / 3))
    trainable = {n for n, p in fused.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 2)[-2] in ("query", "key", "value") for n in trainable)
    fused(X).logits.sum().backward()
    assert all(p.grad is None for n, p in fused.named_parameters() if ".adapters." in n)
    # the one API unloads the fusion too: the pretrained model again
    plain = unload_layers(fused, AdapterFusion, merge=False)
    assert torch.allclose(plain(X).logits, base(X).logits, atol=1e-6)


def test_adapter_bad_input():
    base = tiny_gpt2()
    with pytest.raises(ValueError, match="close names.*c_proj"):
        inject_adapters(copy.deepcopy(base), AdapterConfig(["c_prj"]))
    with pytest.raises(TypeError, match="not: .*LayerNorm"):
        inject_ia3(copy.deepcopy(base), IA3Config(["ln_1"]))
    with pytest.raises(ValueError, match="subset of target_modules"):
        IA3Config(["c_attn"], feedforward_modules=["c_fc"])
    with pytest.raises(ValueError, match="kind must be"):
        AdapterConfig(["c_proj"], kind="lora")
    with pytest.raises(ValueError, match="divisible by phm_dim"):
        AdapterConfig(["c_proj"], bottleneck=6, kind="compacter", phm_dim=4)
    with pytest.raises(ValueError, match="must be an int >= 1, got 0"):
        AdapterConfig(["c_proj"], bottleneck=0)
    one = adapter_modules(inject_adapters(copy.deepcopy(base), AdapterConfig(["c_proj"], bottleneck=4)))
    other = adapter_modules(inject_adapters(copy.deepcopy(base), AdapterConfig(["mlp.c_proj"], bottleneck=4)))
    with pytest.raises(ValueError, match="at least 2"):
        inject_adapter_fusion(copy.deepcopy(base), [one])
    with pytest.raises(ValueError, match="adapter set 1 adapts"):
        inject_adapter_fusion(copy.deepcopy(base), [one, other])
    with pytest.raises(ValueError, match="no WrappedLayer layers: inject them first"):
        merge_layers(base)


@pytest.mark.gpu
def test_ia3_and_adapters_on_cuda():
    base = tiny_gpt2().cuda()
    x = X.cuda()
    model = inject_ia3(copy.deepcopy(base), IA3_GPT2)
    randomize(model)
    out = model(x).logits
    merge_layers(model)
    assert torch.allclose(model(x).logits, out, atol=1e-4)
    adapted = inject_adapters(copy.deepcopy(base), AdapterConfig(["c_proj"], bottleneck=8, kind="compacter"))
    assert torch.allclose(adapted(x).logits, base(x).logits, atol=1e-5)
