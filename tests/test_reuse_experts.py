"""Chapter 13: the weight-ensembling mixture of experts (defining properties, the per-example definition, errors)."""
import copy

import numpy as np
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


def _with_head(model, n_classes, seed):
    m = TinyViT(dim=32, depth=2, heads=2, n_classes=n_classes).eval()
    g = torch.Generator().manual_seed(seed)
    head = {"head.weight": torch.randn(n_classes, 32, generator=g), "head.bias": torch.zeros(n_classes)}
    m.load_state_dict({**{k: v for k, v in model.state_dict().items() if not k.startswith("head.")}, **head})
    return m


def test_per_task_heads_share_the_routers_and_start_at_task_arithmetic(vits):
    model, pre, fts, x = vits
    encoder = {k: v for k, v in pre.items() if not k.startswith("head.")}
    encoders = [{k: v for k, v in sd.items() if k in encoder} for sd in fts]
    tasks = [_with_head(model, n, i) for i, n in enumerate((3, 5, 4))]
    moes = weight_ensembling_moe(tasks, encoder, encoders, EXPERTS, dim=32, lam=0.3, init_lambda=0.3)
    assert len(moes) == 3
    for name in EXPERTS:  # one expert layer (one router) for every task model
        assert all(m.get_submodule(name) is moes[0].get_submodule(name) for m in moes)
        torch.nn.init.zeros_(moes[0].get_submodule(name).router[2].weight)
    static = task_arithmetic(encoder, encoders, lam=0.3)
    for m, task in zip(moes, tasks):
        merged = copy.deepcopy(task)
        merged.load_state_dict(static, strict=False)  # each task's own head under the merged encoder
        assert torch.allclose(m(x), merged(x), atol=1e-5)


def test_per_task_router_training_uses_each_tasks_head(vits):
    model, pre, fts, _ = vits
    encoder = {k: v for k, v in pre.items() if not k.startswith("head.")}
    encoders = [{k: v for k, v in sd.items() if k in encoder} for sd in fts]
    tasks = [_with_head(model, n, i) for i, n in enumerate((3, 5, 4))]
    inputs = [torch.rand(24, 1, 8, 8) for _ in tasks]
    runs = []
    for head in (None, "head"):  # the shared body once per batch gives the same training
        torch.manual_seed(0)
        moes = weight_ensembling_moe(tasks, encoder, encoders, EXPERTS, dim=32)
        frozen = [{k: v.clone() for k, v in m.state_dict().items() if ".router." not in k} for m in moes]
        runs.append(train_routers(moes, inputs, steps=15, lr=1e-2, batch_size=16, device="cpu", head=head))
        assert all(torch.equal(m.state_dict()[k], v) for m, f in zip(moes, frozen) for k, v in f.items())
    assert np.allclose(runs[0], runs[1], atol=1e-5)
    assert np.mean(runs[1][-3:]) < np.mean(runs[1][:3])  # the summed per-task entropy goes down
    labels = [torch.randint(0, n, (24,)) for n in (3, 5, 4)]
    assert len(train_routers(moes, inputs, labels, steps=3, batch_size=16, device="cpu", head="head")) == 3
    with pytest.raises(TypeError, match="one per task model"):
        train_routers(moes, torch.cat(inputs), steps=1)
    with pytest.raises(ValueError, match="differ in"):
        train_routers([moes[0], tasks[1]], inputs[:2], steps=1, head="head")
    with pytest.raises(ValueError, match="2 task models for 3"):
        weight_ensembling_moe(tasks[:2], encoder, encoders, EXPERTS, dim=32)


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
