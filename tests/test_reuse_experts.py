"""Chapter 13: the weight-ensembling mixture of experts (defining properties, the per-example definition, errors)."""
import copy

import pytest
import torch
from torch.func import functional_call

from lfm_ref.reuse import WeightEnsemblingMLP, task_arithmetic, train_routers, weight_ensembling_moe
from lfm_ref.zoo.models import TinyViT

EXPERTS = ["blocks.0.mlp", "blocks.1.mlp"]


def perturbed(sd, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()}


@pytest.fixture(scope="module")
def vits():
    torch.manual_seed(0)
    model = TinyViT(dim=32, depth=2, heads=2).eval()
    pre = model.state_dict()
    return model, pre, [perturbed(pre, s) for s in range(3)], torch.rand(6, 1, 8, 8)


def test_constant_routing_is_task_arithmetic(vits):
    model, pre, fts, x = vits
    moe = weight_ensembling_moe(model, pre, fts, EXPERTS, dim=32, lam=0.3, init_lambda=0.3)
    for name in EXPERTS:  # a router with zero weights outputs its bias, 0.3, for every input
        torch.nn.init.zeros_(moe.get_submodule(name).router[2].weight)
    merged = copy.deepcopy(model)
    merged.load_state_dict(task_arithmetic(pre, fts, lam=0.3))
    assert torch.allclose(moe(x), merged(x), atol=1e-5)


def test_forward_equals_the_per_example_merge(vits):
    # the definition, one example at a time (as the paper's code loops): theta_0 + sum_t r_t(h) tau_t
    model, pre, fts, _ = vits
    blocks = [copy.deepcopy(model) for _ in range(4)]
    for b, sd in zip(blocks, [pre, *fts]):
        b.load_state_dict(sd)
    layer = WeightEnsemblingMLP(blocks[0].blocks[0].mlp, [b.blocks[0].mlp for b in blocks[1:]], dim=32)
    torch.nn.init.normal_(layer.router[2].weight, std=0.5)  # routing that varies from input to input
    h = torch.randn(5, 17, 32)
    r = layer.routing(h)
    assert r.shape == (5, 3) and r.std(0).min() > 0
    expected = []
    for i in range(len(h)):
        params = {name: p + sum(r[i, t] * (dict(b.blocks[0].mlp.named_parameters())[name] - p)
                                for t, b in enumerate(blocks[1:]))
                  for name, p in blocks[0].blocks[0].mlp.named_parameters()}
        expected.append(functional_call(blocks[0].blocks[0].mlp, params, (h[i:i + 1],)))
    assert torch.allclose(layer(h), torch.cat(expected), atol=1e-5)


def test_router_training_changes_only_the_routers(vits):
    model, pre, fts, x = vits
    torch.manual_seed(0)
    moe = weight_ensembling_moe(model, pre, fts, EXPERTS, dim=32)
    frozen = {k: v.clone() for k, v in moe.state_dict().items() if ".router." not in k}
    losses = train_routers(moe, torch.rand(128, 1, 8, 8), steps=40, lr=1e-2, batch_size=32, device="cpu")
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # the entropy goes down
    after = moe.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    labels = torch.randint(0, 10, (128,))
    sup = train_routers(moe, torch.rand(128, 1, 8, 8), labels, steps=5, batch_size=32, device="cpu")
    assert len(sup) == 5


def test_experts_bad_input(vits):
    model, pre, fts, x = vits
    with pytest.raises(ValueError, match="blocks.0.mlp"):
        weight_ensembling_moe(model, pre, fts, ["blocks.0.mpl"], dim=32)
    with pytest.raises(ValueError, match="non-empty list"):
        weight_ensembling_moe(model, pre, fts, "blocks.0.mlp", dim=32)
    with pytest.raises(ValueError, match="empty"):
        weight_ensembling_moe(model, pre, [], EXPERTS, dim=32)
    with pytest.raises(ValueError, match="head.weight"):
        weight_ensembling_moe(model, pre, [{**fts[0], "head.weight": torch.zeros(2, 2)}], EXPERTS, dim=32)
    layer = WeightEnsemblingMLP(model.blocks[0].mlp, [model.blocks[0].mlp], dim=32)
    with pytest.raises(ValueError, match="32 features"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(TypeError, match="nn.Module"):
        WeightEnsemblingMLP(model.blocks[0].mlp, [pre], dim=32)
    with pytest.raises(ValueError, match="no WeightEnsemblingMLP"):
        train_routers(model, x)


@pytest.mark.gpu
def test_wemoe_on_cuda(vits):
    model, pre, fts, x = vits
    gpu = lambda sd: {k: v.cuda() for k, v in sd.items()}  # noqa: E731
    moe = weight_ensembling_moe(copy.deepcopy(model).cuda(), gpu(pre), [gpu(sd) for sd in fts], EXPERTS, dim=32)
    train_routers(moe, torch.rand(64, 1, 8, 8), steps=3, batch_size=32, device="cuda")
    assert moe(x.cuda()).is_cuda
