"""Chapter 10: ensembles, BatchEnsemble and Tangent Model Composition (defining properties, closed forms, errors)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfm_ref.reuse.ensembles import (
    BatchEnsemble,
    BatchEnsembleConv2d,
    BatchEnsembleLinear,
    LinearizedModel,
    StackingCombiner,
    average_probabilities,
    batch_ensemble_objective,
    majority_vote,
    member_batches,
    member_logits,
    stacking_objective,
    tangent_compose,
)
from lfm_ref.zoo.models import TinyCNN, TinyViT


def test_averaging_and_voting():
    logits = torch.randn(1, 5, 4).repeat(3, 1, 1)  # three identical members
    assert torch.allclose(average_probabilities(logits), logits[0].softmax(-1))
    # two members say class 0, one says class 2: the vote is 0 even if the third is very confident
    logits = torch.tensor([[[0.5, 0, 0]], [[0.5, 0, 0]], [[0, 0, 50.0]]])
    assert majority_vote(logits).tolist() == [0]
    assert average_probabilities(logits).argmax(-1).tolist() == [2]
    # a 1-1 tie goes to the class with the larger mean probability
    tie = torch.tensor([[[3.0, 0, 0]], [[0, 1.0, 0]]])
    assert majority_vote(tie).tolist() == [0]


def test_stacking_starts_as_the_geometric_mean_and_learns_to_trust_the_good_member():
    torch.manual_seed(0)
    logits = torch.randn(3, 50, 4)
    stacker = StackingCombiner(3, 4)
    assert torch.allclose(stacker(logits), logits.log_softmax(-1).mean(0), atol=1e-6)
    y = torch.randint(0, 4, (400,))
    good = F.one_hot(y, 4).float() * 3          # member 0 knows the labels, members 1 and 2 are noise
    members = torch.stack([good, torch.randn(400, 4), torch.randn(400, 4)])
    from lfm_ref import fit

    fit(stacker, (members.transpose(0, 1), y), loss_fn=stacking_objective(), steps=100, lr=5e-2, seed=0, device="cpu")
    assert stacker.weight[0] > stacker.weight[1:].abs().max()


def test_batch_ensemble_layer_is_a_rank_one_scaled_weight_per_member():
    torch.manual_seed(0)
    layer = BatchEnsembleLinear(nn.Linear(6, 5), n_members=3)
    for shape in [(3 * 4, 6), (3 * 4, 7, 6)]:  # plain rows, and rows with a token dimension
        x = torch.randn(shape)
        out = layer(x).view(3, 4, *shape[1:-1], 5)
        for i, xi in enumerate(x.view(3, 4, *shape[1:])):
            w_i = layer.weight * torch.outer(layer.s[i], layer.r[i])  # W_i = W o (s_i r_i^T)
            assert torch.allclose(out[i], F.linear(xi, w_i, layer.bias[i]), atol=1e-5)


def test_batch_ensemble_with_unit_fast_weights_is_the_base_model_and_the_loss_is_per_member():
    torch.manual_seed(0)
    vit = TinyViT(dim=32, depth=1, heads=2).eval()
    layers = ["blocks.0.attn.qkv", "blocks.0.mlp.0", "head"]
    be = BatchEnsemble(vit, 2, layers, init_std=0.0).eval()
    x = torch.rand(5, 1, 8, 8)
    members = be.members(torch.stack([x, x]))
    assert torch.allclose(members[0], vit(x), atol=1e-5) and torch.allclose(members[1], vit(x), atol=1e-5)
    assert torch.allclose(be(x), vit(x).log_softmax(-1), atol=1e-5)
    data = member_batches([(x, torch.arange(5)), (x[:4], torch.arange(4))])
    assert data[0].shape == (4, 2, 1, 8, 8) and data[1].shape == (4, 2)
    loss = batch_ensemble_objective()(be, data)
    expected = (F.cross_entropy(vit(x[:4]), torch.arange(4)) * 2) / 2
    assert torch.allclose(loss, expected, atol=1e-5)


def test_batch_ensemble_conv_is_a_rank_one_scaled_kernel_per_member():
    torch.manual_seed(0)
    layer = BatchEnsembleConv2d(nn.Conv2d(3, 4, 3, padding=1), n_members=2)
    x = torch.randn(2 * 5, 3, 8, 8)
    out = layer(x).view(2, 5, 4, 8, 8)
    for i, xi in enumerate(x.view(2, 5, 3, 8, 8)):
        # W_i = W o (s_i r_i^T) over (output, input) channels
        w_i = layer.weight * layer.s[i].view(-1, 1, 1, 1) * layer.r[i].view(1, -1, 1, 1)
        assert torch.allclose(out[i], F.conv2d(xi, w_i, layer.bias[i], padding=1), atol=1e-5)


def test_random_sign_fast_weights_and_a_batch_ensemble_of_a_cnn_from_scratch():
    be = BatchEnsemble(TinyCNN(width=4), 3, ["features.0.0", "features.1.0", "features.3.0", "head"],
                       init="random_sign", seed=1)
    layers = [m for m in be.modules() if isinstance(m, (BatchEnsembleConv2d, BatchEnsembleLinear))]
    assert len(layers) == 4 and isinstance(layers[-1], BatchEnsembleLinear)
    for layer in layers:
        for fast in (layer.r, layer.s):
            assert set(fast.unique().tolist()) <= {-1.0, 1.0}
    # members differ from the start (different signs), and one call runs all of them
    signs = [torch.cat([f[i] for layer in layers for f in (layer.r, layer.s)]) for i in range(3)]
    assert not torch.equal(signs[0], signs[1]) and not torch.equal(signs[1], signs[2])
    x = torch.rand(6, 1, 8, 8)
    members = be.eval().members(x.expand(3, *x.shape))
    assert members.shape == (3, 6, 10) and not torch.allclose(members[0], members[1])
    assert torch.allclose(be(x), members.softmax(-1).mean(0).log(), atol=1e-5)


def test_linearized_model_is_the_first_order_taylor_expansion():
    torch.manual_seed(0)
    vit = TinyViT(dim=32, depth=1, heads=2).eval()
    lin = LinearizedModel(vit, trainable=("blocks.0", "head"))
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(lin(x), vit(x), atol=1e-6)  # Delta = 0
    directions = [torch.randn_like(d) for d in lin.delta]
    with torch.no_grad():
        for d, v in zip(lin.delta, directions):
            d.copy_(v)
        jvp_out = lin(x) - vit(x)
        eps = 1e-3  # finite difference along Delta: (f(theta_0 + eps Delta) - f(theta_0)) / eps ~ J Delta
        shifted = {n: p + eps * directions[lin.names.index(n)] if n in lin.names else p
                   for n, p in vit.named_parameters()}
        fd = (torch.func.functional_call(vit, shifted, (x,)) - vit(x)) / eps
    assert torch.allclose(jvp_out, fd, atol=2e-2 * fd.abs().max().item())


def test_linearizing_a_linear_model_is_exact_and_composition_is_the_ensemble():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    x = torch.randn(8, 5)
    parts = []
    for _ in range(3):
        lin = LinearizedModel(base)
        with torch.no_grad():
            for d in lin.delta:
                d.normal_()
        parts.append(lin)
    # for a model linear in its parameters the tangent model is the model itself: f_lin(Delta) = f(theta_0 + Delta)
    moved = nn.Linear(5, 3)
    with torch.no_grad():
        moved.weight.copy_(base.weight + parts[0].delta[0])
        moved.bias.copy_(base.bias + parts[0].delta[1])
    assert torch.allclose(parts[0](x), moved(x), atol=1e-5)
    composed = tangent_compose(parts)
    assert torch.allclose(composed(x), member_logits(parts, x).mean(0), atol=1e-5)
    weighted = tangent_compose(parts, weights=[0.5, 0.25, 0.25])
    assert torch.allclose(weighted(x), 0.5 * parts[0](x) + 0.25 * parts[1](x) + 0.25 * parts[2](x), atol=1e-5)


def test_ensembles_bad_input():
    with pytest.raises(ValueError, match="members, examples, classes"):
        average_probabilities(torch.randn(4, 3))
    with pytest.raises(ValueError, match="non-empty list"):
        member_logits([], torch.randn(2, 3))
    with pytest.raises(ValueError, match="3 members"):
        StackingCombiner(3, 4)(torch.randn(2, 5, 4))
    with pytest.raises(TypeError, match="nn.Linear"):
        BatchEnsembleLinear(nn.Conv2d(1, 1, 3), 2)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        BatchEnsembleConv2d(nn.Linear(3, 2), 2)
    with pytest.raises(ValueError, match="ungrouped"):
        BatchEnsembleConv2d(nn.Conv2d(2, 2, 3, groups=2), 2)
    with pytest.raises(ValueError, match="init must be"):
        BatchEnsembleLinear(nn.Linear(3, 2), 2, init="uniform")
    with pytest.raises(ValueError, match="members \\* batch rows"):
        BatchEnsembleConv2d(nn.Conv2d(1, 1, 3), 2)(torch.randn(3, 1, 8, 8))
    with pytest.raises(ValueError, match="members \\* batch rows"):
        BatchEnsembleLinear(nn.Linear(3, 2), 2)(torch.randn(3, 3))
    with pytest.raises(ValueError, match="blocks.0.mpl"):
        BatchEnsemble(TinyViT(dim=32, depth=1, heads=2), 2, ["blocks.0.mpl.0"])
    with pytest.raises(ValueError, match="no parameter name starts with"):
        LinearizedModel(nn.Linear(2, 2), trainable=("head",))
    a, b = LinearizedModel(nn.Linear(2, 2)), LinearizedModel(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="different model"):
        tangent_compose([a, b])
    with pytest.raises(ValueError, match="2 weights for 1"):
        tangent_compose([a], weights=[0.5, 0.5])
    with pytest.raises(TypeError, match="LinearizedModel"):
        tangent_compose([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="one \\(x, y\\) data set per member"):
        member_batches([])


@pytest.mark.gpu
def test_ensembles_on_cuda():
    vit = TinyViT(dim=32, depth=1, heads=2).cuda().eval()
    x = torch.rand(4, 1, 8, 8, device="cuda")
    be = BatchEnsemble(vit, 2, ["head"])
    assert be(x).is_cuda
    lin = LinearizedModel(vit, trainable=("head",))
    assert torch.allclose(lin(x), vit(x), atol=1e-5)
    assert tangent_compose([lin, lin])(x).is_cuda


def test_ensembles_restore_the_mode_and_leave_the_global_stream_alone():
    vit = TinyViT(dim=32, depth=1, heads=2).train()
    x = torch.rand(4, 1, 8, 8)
    member_logits([vit], x)
    assert all(m.training for m in vit.modules())
    linear = nn.Linear(3, 2)
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    BatchEnsembleLinear(linear, 2)  # fast weights from a generator (seed 0), not the global stream
    BatchEnsemble(vit, 2, ["head"], seed=1)
    assert torch.equal(torch.rand(2), expected)
