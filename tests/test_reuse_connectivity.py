"""Chapter 12: mode connectivity, permutations, re-basin, OT fusion, ZipIt (defining properties, closed forms,
errors)."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from lfm_ref import fit, seed_everything
from lfm_ref.reuse.connectivity import (
    BezierCurve,
    barrier,
    interpolate,
    linear_chain,
    linear_path,
    loss_and_accuracy,
    mlp_permutation_spec,
    ot_fusion,
    permute_state_dict,
    random_permutations,
    sinkhorn,
    weight_matching,
    zipit,
)
from lfm_ref.zoo.models import TinyMLP


def outputs(sd, x, hidden=16):
    model = TinyMLP(hidden=hidden)
    model.load_state_dict(sd)
    return model.eval()(x)


def equal(a, b, atol=1e-6):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


@pytest.fixture(scope="module")
def mlps():
    seed_everything(0)
    a, b = TinyMLP(hidden=16), TinyMLP(hidden=16)
    x = torch.rand(200, 1, 8, 8)
    return a, b, x, mlp_permutation_spec(linear_chain(a))


# ----- permutation symmetry and re-basin -------------------------------------------------------------
def test_permuting_hidden_units_leaves_the_function_unchanged(mlps):
    a, _, x, spec = mlps
    assert spec == {"body.1.weight": ("P_0", None), "body.1.bias": ("P_0",), "body.3.weight": ("P_1", "P_0"),
                    "body.3.bias": ("P_1",), "head.weight": (None, "P_1"), "head.bias": (None,)}
    sd = a.state_dict()
    permuted = permute_state_dict(sd, spec, random_permutations(spec, sd, seed=3))
    assert not torch.allclose(permuted["body.1.weight"], sd["body.1.weight"])
    assert torch.allclose(outputs(permuted, x), outputs(sd, x), atol=1e-6)


def test_weight_matching_undoes_a_known_permutation(mlps):
    a, _, x, spec = mlps
    sd = a.state_dict()
    scrambled = permute_state_dict(sd, spec, random_permutations(spec, sd, seed=1))
    perms = weight_matching(spec, sd, scrambled)
    assert equal(permute_state_dict(scrambled, spec, perms), sd)


def test_rebasin_keeps_the_function_and_increases_the_matching_objective(mlps):
    a, b, x, spec = mlps
    sa, sb = a.state_dict(), b.state_dict()
    perms = weight_matching(spec, sa, sb)
    aligned = permute_state_dict(sb, spec, perms)
    assert torch.allclose(outputs(aligned, x), outputs(sb, x), atol=1e-6)

    def objective(s):  # sum_l <W_l^A, W_l^B>
        return sum(float((sa[k] * s[k]).sum()) for k in spec)

    assert objective(aligned) > objective(sb)


def test_weight_matching_of_one_hidden_layer_is_the_brute_force_optimum():
    # with one permutation the problem is a single linear assignment: exact, so it must match brute force
    torch.manual_seed(0)
    a = {"l0.weight": torch.randn(5, 3), "l0.bias": torch.randn(5), "l1.weight": torch.randn(2, 5),
         "l1.bias": torch.randn(2)}
    b = {k: torch.randn_like(v) for k, v in a.items()}
    spec = mlp_permutation_spec(["l0", "l1"])

    def score(perm):
        p = permute_state_dict(b, spec, {"P_0": torch.tensor(perm)})
        return sum(float((a[k] * p[k]).sum()) for k in a)

    best = max(itertools.permutations(range(5)), key=score)
    found = weight_matching(spec, a, b)["P_0"]
    assert score(found.tolist()) == pytest.approx(score(best), abs=1e-9)


# ----- paths, barriers and curves ------------------------------------------------------------------
def test_interpolation_ends_and_barrier_formula(mlps):
    a, b, _, _ = mlps
    sa, sb = a.state_dict(), b.state_dict()
    assert equal(interpolate(sa, sb, 0.0), sa) and equal(interpolate(sa, sb, 1.0), sb)
    assert equal(interpolate(sa, sb, 0.25), {k: 0.75 * sa[k] + 0.25 * sb[k] for k in sa})
    assert barrier([1.0, 1.5, 2.0]) == 0.0                      # on the chord
    assert barrier([1.0, 3.0, 2.0]) == pytest.approx(1.5)       # 3 - (1 + 2) / 2
    assert barrier([0.0, 1.0, 0.0, 0.0, 0.0], alphas=[0, 0.1, 0.5, 0.9, 1]) == pytest.approx(1.0)


def test_linear_path_ends_are_the_two_models(mlps):
    a, b, x, _ = mlps
    y = torch.randint(0, 10, (len(x),))
    path = linear_path(TinyMLP(hidden=16), a.state_dict(), b.state_dict(), (x, y), alphas=[0, 0.5, 1])
    assert path["loss"][0] == pytest.approx(loss_and_accuracy(a, (x, y))[0], rel=1e-5)
    assert path["accuracy"][-1] == pytest.approx(loss_and_accuracy(b, (x, y))[1])


def test_bezier_curve_passes_through_its_ends_and_training_lowers_the_loss_along_it():
    from lfm_ref.data import digits_task

    data = digits_task("digits", "train")
    seed_everything(0)
    models = [TinyMLP(hidden=16) for _ in range(2)]
    for i, m in enumerate(models):
        fit(m, data, steps=150, lr=1e-2, seed=i)
    sa, sb = (m.state_dict() for m in models)
    curve = BezierCurve(TinyMLP(hidden=16), sa, sb)
    assert equal(curve.point(0.0), sa) and equal(curve.point(1.0), sb)
    assert equal(curve.point(0.5), interpolate(sa, sb, 0.5))  # theta_C starts at the midpoint: the straight line
    probe = TinyMLP(hidden=16)

    def mean_loss():
        losses = []
        for t in np.linspace(0, 1, 9):
            probe.load_state_dict({k: v.detach() for k, v in curve.point(float(t)).items()})
            losses.append(loss_and_accuracy(probe, data)[0])
        return np.mean(losses)

    before = mean_loss()
    fit(curve, data, steps=150, lr=1e-2, seed=0)
    assert mean_loss() < before
    assert equal({k: v.detach() for k, v in curve.point(0.0).items()}, sa)  # the ends never move
    x = data[0][:5]
    assert torch.allclose(curve(x, t=1.0), models[1](x), atol=1e-5)


# ----- OT fusion and ZipIt ---------------------------------------------------------------------------
def test_sinkhorn_has_uniform_marginals_and_tends_to_the_exact_plan():
    torch.manual_seed(0)
    cost = torch.rand(6, 6, dtype=torch.float64)
    soft = sinkhorn(cost, reg=0.1)
    assert torch.allclose(soft.sum(1), torch.full((6,), 1 / 6, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(soft.sum(0), torch.full((6,), 1 / 6, dtype=torch.float64), atol=1e-6)
    from scipy.optimize import linear_sum_assignment

    _, col = linear_sum_assignment(cost.numpy())
    assert (sinkhorn(cost, reg=0.01).argmax(1).numpy() == col).all()
    assert (sinkhorn(cost, reg=10.0) - 1 / 36).abs().max() < 1e-2  # huge regularisation: the uniform plan


def test_ot_fusion_of_a_model_and_its_permuted_copy_is_the_model(mlps):
    a, _, x, spec = mlps
    sd = a.state_dict()
    layers = linear_chain(a)
    scrambled = permute_state_dict(sd, spec, random_permutations(spec, sd, seed=2))
    assert torch.allclose(outputs(ot_fusion(sd, scrambled, layers), x), outputs(sd, x), atol=1e-5)
    assert equal(ot_fusion(sd, scrambled, layers, alpha=0.0), sd, atol=1e-6)
    naive = interpolate(sd, scrambled, 0.5)
    assert not torch.allclose(outputs(naive, x), outputs(sd, x), atol=1e-2)


@pytest.mark.parametrize("same_model", [False, True])
def test_zipit_of_a_model_and_its_permuted_copy_is_the_model(mlps, same_model):
    a, _, x, spec = mlps
    sd = a.state_dict()
    copy_ = TinyMLP(hidden=16)
    copy_.load_state_dict(permute_state_dict(sd, spec, random_permutations(spec, sd, seed=4)))
    merged = zipit(a, copy_, linear_chain(a), x, same_model=same_model)
    assert torch.allclose(outputs(merged, x), outputs(sd, x), atol=1e-5)


@pytest.mark.parametrize("same_model", [False, True])
def test_zipit_with_separate_heads_keeps_each_models_function(mlps, same_model):
    # ZipIt's disjoint-task setting: B is A's permuted copy with a head of its own; zipping the bodies and
    # giving each head the merged features through its rows of U must leave both functions unchanged
    a, _, x, spec = mlps
    sd = a.state_dict()
    g = torch.Generator().manual_seed(5)
    b_sd = permute_state_dict(sd, spec, random_permutations(spec, sd, seed=6))
    b_sd["head.weight"] = torch.randn(b_sd["head.weight"].shape, generator=g)
    b_sd["head.bias"] = torch.randn(b_sd["head.bias"].shape, generator=g)
    b = TinyMLP(hidden=16)
    b.load_state_dict(b_sd)
    za, zb = zipit(a, b, linear_chain(a), x, same_model=same_model, separate_heads=True)
    assert {k: v for k, v in za.items() if not k.startswith("head.")}.keys() == {
        k for k in sd if not k.startswith("head.")}
    assert all(torch.equal(za[k], zb[k]) for k in za if not k.startswith("head."))  # one merged body
    assert torch.allclose(outputs(za, x), outputs(sd, x), atol=1e-5)
    assert torch.allclose(outputs(zb, x), outputs(b_sd, x), atol=1e-5)
    with pytest.raises(TypeError, match="separate_heads must be a bool"):
        zipit(a, b, linear_chain(a), x, separate_heads="yes")


# ----- errors ----------------------------------------------------------------------------------------
def test_connectivity_bad_input(mlps):
    a, b, x, spec = mlps
    sd = a.state_dict()
    with pytest.raises(ValueError, match="'body.9.weight', which the state dict does not have"):
        permute_state_dict(sd, {"body.9.weight": ("P_0", None)}, {})
    with pytest.raises(ValueError, match="no permutation given for 'P_1'"):
        permute_state_dict(sd, spec, {"P_0": torch.arange(16)})
    with pytest.raises(ValueError, match="must be a permutation of range"):
        permute_state_dict(sd, spec, {"P_0": torch.zeros(16, dtype=torch.long), "P_1": torch.arange(16)})
    with pytest.raises(ValueError, match="not a chain"):
        linear_chain(nn.Sequential(nn.Linear(4, 8), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="at least two"):
        mlp_permutation_spec("head")
    with pytest.raises(ValueError, match="head.bias"):
        weight_matching(spec, sd, {**sd, "head.bias": torch.zeros(3)})
    curve = BezierCurve(TinyMLP(hidden=16), sd, b.state_dict()).eval()
    with pytest.raises(ValueError, match="curve position t"):
        curve(x)
    with pytest.raises(ValueError, match="architecture"):
        BezierCurve(TinyMLP(hidden=16), {"w": torch.ones(2)}, {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="equal length"):
        barrier([1.0, 2.0], alphas=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="reg must be None"):
        ot_fusion(sd, sd, linear_chain(a), reg=0.0)
    with pytest.raises(ValueError, match="no linear layer 'body.2'"):
        ot_fusion(sd, sd, ["body.1", "body.2"])
    with pytest.raises(TypeError, match="alpha must be a number"):
        interpolate(sd, sd, "0.5")


@pytest.mark.gpu
def test_rebasin_and_fusion_on_cuda(mlps):
    a, b, x, spec = mlps
    sa, sb = ({k: v.cuda() for k, v in m.state_dict().items()} for m in (a, b))
    perms = weight_matching(spec, sa, sb)
    aligned = permute_state_dict(sb, spec, perms)
    assert aligned["body.1.weight"].is_cuda
    assert torch.allclose(outputs({k: v.cpu() for k, v in aligned.items()}, x), outputs(b.state_dict(), x), atol=1e-5)
    assert ot_fusion(sa, sb, linear_chain(a))["head.weight"].is_cuda
    ga, gb = a.cuda(), b.cuda()
    try:
        assert zipit(ga, gb, linear_chain(a), x.cuda())["body.3.weight"].is_cuda
    finally:
        a.cpu(), b.cpu()


def test_connectivity_restores_the_mode_and_leaves_the_global_stream_alone(mlps):
    a, b, x, spec = mlps
    a.train(), b.train()
    zipit(a, b, linear_chain(a), x)
    assert a.training and b.training and all(m.training for m in a.modules())
    a.eval(), b.eval()
    curve = BezierCurve(TinyMLP(hidden=16), a.state_dict(), b.state_dict(), seed=3).train()
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    curve(x[:2]), curve(x[:2])  # t ~ U(0, 1) from the curve's own generator
    assert torch.equal(torch.rand(2), expected)
    again = BezierCurve(TinyMLP(hidden=16), a.state_dict(), b.state_dict(), seed=3).train()
    assert torch.allclose(again(x[:2]), BezierCurve(TinyMLP(hidden=16), a.state_dict(), b.state_dict(),
                                                    seed=3).train()(x[:2]))
