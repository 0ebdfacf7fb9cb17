"""Chapter 11: weight merging on state dicts (defining properties, PEFT and mergekit as peers, errors)."""
import pytest
import torch
from torch import nn

from lfm_ref.reuse import (
    METHODS,
    adamerging,
    dare,
    dare_merge,
    diagonal_fisher,
    fisher_merge,
    gram_matrices,
    kept_entries,
    merge,
    regmean,
    task_arithmetic,
    task_vector,
    ties_merge,
    trim,
    weighted_average,
)
from lfm_ref.zoo.models import TinyCNN, TinyViT


def close(a, b, atol=1e-6):
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


def perturbed(sd, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in sd.items()}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    pre = TinyCNN(width=4).state_dict()  # has BatchNorm buffers, including the integer num_batches_tracked
    return pre, [perturbed(pre, seed=s) for s in range(3)]


# ----- defining properties ------------------------------------------------------------------------
def test_averaging_copies_of_one_model_returns_it(models):
    pre, _ = models
    assert close(weighted_average([pre, pre, pre]), pre)
    assert close(merge("average", None, [pre, pre]), pre)


def test_weighted_average_is_fedavg(models):
    _, (a, b, _) = models
    merged = weighted_average([a, b], weights=[30, 10])  # client sizes 30 and 10
    assert close(merged, {k: 0.75 * a[k] + 0.25 * b[k] if a[k].is_floating_point() else a[k] for k in a})
    assert merged["features.0.1.num_batches_tracked"].dtype == torch.long


def test_task_arithmetic_lambda_zero_is_pretrained_and_one_adds_the_vectors(models):
    pre, fts = models
    assert close(task_arithmetic(pre, fts, lam=0.0), pre)
    one = task_arithmetic(pre, fts[:1], lam=1.0)
    assert close(one, fts[0], atol=1e-6)
    # negation: subtracting a task vector from its own fine-tuned model gives back the pretrained weights
    tau = task_vector(pre, fts[0])
    assert close({k: fts[0][k] - tau[k] if k in tau else fts[0][k] for k in pre}, pre)


def test_task_arithmetic_with_lambda_one_over_t_is_averaging(models):
    pre, fts = models
    assert close(task_arithmetic(pre, fts, lam=1 / 3), weighted_average(fts), atol=1e-6)


def test_ties_with_full_density_and_no_sign_conflict_is_task_arithmetic(models):
    pre, _ = models
    g = torch.Generator().manual_seed(1)
    # every task moves every parameter in the same direction: no conflicts to resolve
    direction = {k: torch.randn(v.shape, generator=g).sign() if v.is_floating_point() else None for k, v in pre.items()}
    fts = [{k: v + (s + 1) * 0.01 * direction[k] * torch.rand(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in pre.items()} for s in range(3)]
    # the disjoint mean of agreeing entries is their mean, so TIES(lam) = TA(lam / T)
    assert close(ties_merge(pre, fts, density=1.0, lam=1.0), task_arithmetic(pre, fts, lam=1 / 3), atol=1e-6)


def test_ties_drops_the_minority_sign():
    pre = {"w": torch.zeros(1)}
    fts = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([-0.5])}]
    assert torch.allclose(ties_merge(pre, fts, density=1.0)["w"], torch.tensor([1.5]))  # mean of 1 and 2


def test_trim_keeps_the_largest_entries():
    v = {"a": torch.tensor([0.1, -3.0, 0.2, 4.0]), "b": torch.tensor([-5.0, 0.3])}
    model = trim(v, density=0.5, scope="model")  # 3 of 6 entries over the whole vector
    assert model["a"].tolist() == [0, -3.0, 0, 4.0] and model["b"].tolist() == [-5.0, 0]
    tensor = trim(v, density=0.5, scope="tensor")  # half of each tensor
    assert tensor["a"].tolist() == [0, 0, 0, 4.0] or tensor["a"].tolist() == [0, -3.0, 0, 4.0]
    assert tensor["a"].count_nonzero() == 2 and tensor["b"].tolist() == [-5.0, 0]


def test_dare_with_p_zero_is_the_identity_and_its_mean_is_the_input():
    v = {"w": torch.randn(50, 40)}
    assert torch.equal(dare(v, p=0.0, seed=0)["w"], v["w"])
    draws = torch.stack([dare(v, p=0.7, seed=s)["w"] for s in range(400)])
    dropped = (draws == 0).float().mean().item()
    assert abs(dropped - 0.7) < 0.01
    # E[DARE(v)] = v: the mean over 400 draws is within 4 standard errors everywhere
    std_err = v["w"].abs() * (0.7 / 0.3) ** 0.5 / 400**0.5
    assert ((draws.mean(0) - v["w"]).abs() <= 4 * std_err + 1e-6).float().mean() > 0.999
    assert dare(v, p=0.7, seed=3)["w"].equal(dare(v, p=0.7, seed=3)["w"])


def test_fisher_merging_with_equal_fishers_is_averaging(models):
    _, fts = models
    ones = [{k: torch.ones_like(v) for k, v in sd.items() if v.is_floating_point()} for sd in fts]
    assert close(fisher_merge(fts, ones), weighted_average(fts), atol=1e-6)
    # a model with a much larger Fisher dominates the merge
    big = [{k: v * (1e6 if i == 0 else 1) for k, v in f.items()} for i, f in enumerate(ones)]
    assert close(fisher_merge(fts, big), {k: v if v.is_floating_point() else v for k, v in fts[0].items()}, atol=1e-4)


def test_diagonal_fisher_matches_the_per_example_definition():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.rand(7, 1, 8, 8)
    fisher = diagonal_fisher(model, x, batch_size=3)
    expected = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    for xi in x:  # the definition, one example and one class at a time
        probs = model(xi[None]).softmax(-1)[0].detach()
        for y in range(3):
            model.zero_grad()
            torch.log_softmax(model(xi[None]), -1)[0, y].backward()
            for k, p in model.named_parameters():
                expected[k] += probs[y] * p.grad.pow(2) / len(x)
    assert close(fisher, expected, atol=1e-6)


def test_regmean_solves_its_normal_equations():
    """For one linear layer, RegMean (alpha=1) is the least-squares fit to every model's outputs."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 4)) for _ in range(3)]
    inputs = [torch.randn(50, 6) + i for i in range(3)]
    merged = regmean(models, inputs, off_diagonal=1.0)["0.weight"].double()
    grams = [x.double().T @ x.double() for x in inputs]
    lhs = merged @ sum(grams)
    rhs = sum(m[0].weight.detach().double() @ g for m, g in zip(models, grams))
    assert torch.allclose(lhs, rhs, atol=1e-8)
    # the same W from stacking every model's inputs and outputs into one least-squares problem
    x = torch.cat(inputs).double()
    y = torch.cat([xi.double() @ m[0].weight.detach().double().T for m, xi in zip(models, inputs)])
    assert torch.allclose(merged, torch.linalg.lstsq(x, y).solution.T, atol=1e-6)


def test_regmean_with_equal_inputs_statistics_is_averaging_and_with_itself_is_identity():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 4)) for _ in range(2)]
    x = torch.randn(40, 6)
    avg = weighted_average([m.state_dict() for m in models])
    assert close(regmean(models, [x, x]), avg, atol=1e-5)
    vit = TinyViT()
    assert close(regmean([vit, vit], [torch.rand(32, 1, 8, 8)] * 2), vit.state_dict(), atol=1e-5)


def test_regmean_handles_gpt2_conv1d():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=30, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    models = [GPT2LMHeadModel(config).eval() for _ in range(2)]
    ids = [torch.randint(0, 30, (20, 8)) for _ in range(2)]
    merged = regmean(models, ids, off_diagonal=0.9)
    name = "transformer.h.0.mlp.c_fc"  # Conv1D: y = x W with W of shape (in, out)
    # this layer reads LayerNorm outputs, whose features sum to zero: X^T X is singular, and alpha < 1
    # (the paper's regularisation) is what makes the system solvable
    grams = [gram_matrices(m, x)[name] for m, x in zip(models, ids)]
    grams = [0.9 * g + 0.1 * torch.diag(torch.diag(g)) for g in grams]
    weights = [dict(m.named_modules())[name].weight.detach().double() for m in models]
    lhs = sum(grams) @ merged[f"{name}.weight"].double()
    assert torch.allclose(lhs, sum(g @ w for g, w in zip(grams, weights)), atol=1e-6)


def test_adamerging_starts_at_task_arithmetic_and_lowers_entropy(models):
    pre, fts = models
    cnn = TinyCNN(width=4)
    x = [torch.rand(40, 1, 8, 8) for _ in fts]
    start, lam0 = adamerging(cnn, pre, fts, x, steps=0, lam=0.3)
    assert close(start, task_arithmetic(pre, fts, lam=0.3), atol=1e-6) and (lam0 == 0.3).all()

    def entropy(sd):
        cnn.load_state_dict(sd)
        p = cnn.eval()(torch.cat(x)).softmax(-1)
        return -(p * p.log()).sum(-1).mean().item()

    learned, lam = adamerging(cnn, pre, fts, x, steps=60, lr=0.05, lam=0.3)
    assert lam.shape == (3, len(list(cnn.parameters())))
    assert entropy(learned) < entropy(start)


# ----- peer: PEFT's merge utilities (per-tensor trimming, mean over agreeing models) -----------------
def test_ties_and_dare_match_peft_merge_utils():
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    torch.manual_seed(0)
    pre = {"w": torch.randn(20, 30), "b": torch.randn(30)}
    fts = [{k: v + torch.randn_like(v) for k, v in pre.items()} for _ in range(3)]
    pre["scale"] = torch.randn(())  # one entry: int(0.3 * 1) = 0 are kept, PEFT's rounding
    fts = [{**sd, "scale": pre["scale"] + torch.randn(())} for sd in fts]
    ours = ties_merge(pre, fts, density=0.3, lam=1.0, scope="tensor", rounding="floor")
    assert torch.equal(ours["scale"], pre["scale"])  # with PEFT's rounding a scalar never merges
    for k in pre:
        theirs = merge_utils.ties([sd[k] - pre[k] for sd in fts], torch.ones(3), density=0.3)
        assert torch.allclose(ours[k], pre[k] + theirs, atol=1e-6), k
    # task arithmetic
    ta = task_arithmetic(pre, fts, lam=0.4)
    for k in pre:
        theirs = merge_utils.task_arithmetic([sd[k] - pre[k] for sd in fts], torch.full((3,), 0.4))
        assert torch.allclose(ta[k], pre[k] + theirs, atol=1e-6), k
    # DARE: the same Bernoulli draws from the same seed, rescaled by 1 / (1 - p)
    tau = fts[0]["w"] - pre["w"]
    torch.manual_seed(5)
    theirs = merge_utils.random_pruning(tau, density=0.3, rescale=True)
    assert torch.allclose(dare({"w": tau}, p=0.7, seed=5)["w"], theirs, atol=1e-6)


# ----- peer: mergekit's generalized task arithmetic, its own merge_group code path -----------------
def _mergekit(name, base, tensors, **parameters):
    registry = pytest.importorskip("mergekit.merge_methods.registry")
    from mergekit.merge_methods.base import TensorGroup

    group = TensorGroup.from_tensors([base, *tensors], base_index=0)
    ids = range(1, len(tensors) + 1)
    defaults = {"int8_mask": False, "lambda": 1.0, "weight": {i: 1.0 for i in ids}, "density": {i: 1.0 for i in ids}}
    method = registry.get(name)
    return method.merge_group(group, **{"normalize": method.default_normalize,
                                        "rescale": method.default_rescale, **defaults, **parameters})


def test_task_arithmetic_ties_and_dare_match_mergekit():
    torch.manual_seed(0)
    pre = {"w": torch.randn(24, 40), "b": torch.randn(40)}
    fts = [{k: v + torch.randn_like(v) for k, v in pre.items()} for _ in range(3)]
    pre["scale"] = torch.randn(())  # mergekit keeps max(1, int(density * n)): one entry of a scalar
    fts = [{**sd, "scale": pre["scale"] + torch.randn(())} for sd in fts]
    ta = task_arithmetic(pre, fts, lam=0.4)
    # mergekit's TIES trims per tensor and takes the mean over the agreeing models (normalize=True);
    # its rounding is our default, "at_least_one"
    ties = ties_merge(pre, fts, density=0.3, lam=0.8, scope="tensor")
    assert not torch.equal(ties["scale"], pre["scale"])
    for k in pre:
        tensors = [sd[k] for sd in fts]
        assert torch.allclose(ta[k], _mergekit("task_arithmetic", pre[k], tensors, **{"lambda": 0.4}), atol=1e-5)
        theirs = _mergekit("ties", pre[k], tensors, density={i: 0.3 for i in (1, 2, 3)}, **{"lambda": 0.8})
        assert torch.allclose(ties[k], theirs, atol=1e-5), k
    # DARE: mergekit's default rescale matches the L1 norm, the paper's divides by 1 - p. With rescaling off,
    # the same seed gives the same Bernoulli draws, so the dropped task vectors are equal.
    tau = fts[0]["w"] - pre["w"]
    torch.manual_seed(3)
    theirs = _mergekit("dare_linear", pre["w"], [fts[0]["w"]], density={1: 0.25}, rescale=False)
    assert torch.allclose(pre["w"] + dare({"w": tau}, p=0.75, seed=3, rescale=False)["w"], theirs, atol=1e-6)


def test_dare_merge_combines_with_task_arithmetic_and_ties(models):
    pre, fts = models
    assert close(dare_merge(pre, fts, p=0.0, lam=0.5), task_arithmetic(pre, fts, lam=0.5), atol=1e-6)
    assert close(dare_merge(pre, fts, p=0.0, lam=1.0, then="ties"), ties_merge(pre, fts, density=1.0), atol=1e-6)


# ----- the TIES authors' reference code: model scope, floor(density * n) + 1 kept ---------------------
def _reference_topk_values_mask(flat, density):
    """The rule of ``topk_values_mask`` in github.com/prateeky2806/ties-merging, src/utils/merge_utils.py
    (also fusion-bench's): keep |M| >= the (d - int(d * K))-th smallest magnitude of each row."""
    d = flat.shape[1]
    kth = flat.abs().kthvalue(d - int(d * density), dim=1, keepdim=True).values
    return flat * (flat.abs() >= kth)


def _reference_ties(pre, fts, density):
    keys = [k for k, v in pre.items() if v.is_floating_point()]
    flat = torch.stack([torch.cat([(sd[k] - pre[k]).flatten() for k in keys]) for sd in fts])  # (T, n)
    trimmed = _reference_topk_values_mask(flat, density)
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    agree = (trimmed != 0) & (trimmed.sign() == sign)
    merged = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    out, start = {}, 0
    for k in keys:
        out[k] = pre[k] + merged[start:start + pre[k].numel()].view_as(pre[k])
        start += pre[k].numel()
    return out


def test_ties_model_scope_with_floor_plus_one_is_the_reference_code(models):
    pre, fts = models
    ours = ties_merge(pre, fts, density=0.2, lam=1.0, scope="model", rounding="floor_plus_one")
    reference = _reference_ties(pre, fts, 0.2)
    assert all(torch.allclose(ours[k], v, atol=1e-6) for k, v in reference.items())
    n = sum(v.numel() for v in pre.values() if v.is_floating_point())
    assert kept_entries(n, 0.2, "floor_plus_one") == int(0.2 * n) + 1
    assert kept_entries(3, 0.2) == 1 and kept_entries(3, 0.2, "floor") == 0 and kept_entries(10, 0.2) == 2


def test_ties_scopes_agree_on_one_tensor_and_every_tensor_merges():
    g = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(30, 20, generator=g)}
    fts = [{"w": pre["w"] + torch.randn(30, 20, generator=g)} for _ in range(3)]
    for rounding in ("at_least_one", "floor", "floor_plus_one"):
        model = ties_merge(pre, fts, density=0.1, scope="model", rounding=rounding)
        tensor = ties_merge(pre, fts, density=0.1, scope="tensor", rounding=rounding)
        assert torch.equal(model["w"], tensor["w"]), rounding  # one tensor: the two scopes are one ranking
    # a scalar (a logit scale) and a 3-entry bias merge under the default rounding, in both scopes
    pre = {"scale": torch.tensor(1.0), "bias": torch.zeros(3), "w": torch.zeros(100)}
    fts = [{"scale": torch.tensor(2.0), "bias": torch.tensor([0.0, 0.5, 0.1]), "w": torch.full((100,), 0.01)}]
    tensor = ties_merge(pre, fts, density=0.2, scope="tensor")
    assert tensor["scale"] == 2.0 and tensor["bias"].tolist() == [0.0, 0.5, 0.0]


# ----- equal to the first implementation (stacked tensors, kthvalue, torch.bernoulli) ---------------
def _first_ties(pre, fts, density, scope, keep):
    taus = {k: torch.stack([sd[k] for sd in fts]) - v for k, v in pre.items() if v.is_floating_point()}
    if scope == "model":
        flat = torch.cat([t.reshape(len(t), -1) for t in taus.values()], 1).abs()
        n = flat.shape[1]
        thresholds = flat.kthvalue(n - keep(n) + 1, dim=1).values
    out = {}
    for k, tau in taus.items():
        if scope == "tensor":
            flat = tau.reshape(len(tau), -1)
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask.scatter_(1, flat.abs().topk(keep(flat.shape[1]), dim=1).indices, True)
            tau = tau * mask.view_as(tau)
        else:
            tau = tau * (tau.abs() >= thresholds.view(-1, *[1] * (tau.dim() - 1)))
        sign = torch.where(tau.sum(0) >= 0, 1.0, -1.0)
        agree = (tau != 0) & (tau.sign() == sign)
        out[k] = pre[k] + (tau * agree).sum(0) / agree.sum(0).clamp(min=1)
    return out


def _first_dare(pre, fts, p, lam, seed):
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in pre.items():
        if v.is_floating_point():
            tau = torch.stack([sd[k] for sd in fts]) - v
            tau = tau * torch.bernoulli(torch.full(tau.shape, 1 - p), generator=generator) / (1 - p)
            out[k] = v + lam * tau.sum(0)
    return out


def test_fast_ties_and_dare_equal_the_first_implementation():
    g = torch.Generator().manual_seed(0)
    # one tensor above the size where the exact selection brackets a sample (2^18 entries)
    shapes = {"big": (700, 500), "w": (31, 17), "b": (5,), "s": ()}
    pre = {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    fts = [{k: v + torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(3)]
    model_keep = lambda n: max(1, int(0.2 * n))  # noqa: E731 (the first model scope: at least one)
    for k, v in _first_ties(pre, fts, 0.2, "model", model_keep).items():
        assert torch.equal(ties_merge(pre, fts, density=0.2, scope="model")[k], v), k
    tensor_keep = lambda n: int(0.2 * n)  # noqa: E731 (the first per-tensor scope: PEFT's floor)
    ours = ties_merge(pre, fts, density=0.2, scope="tensor", rounding="floor")
    for k, v in _first_ties(pre, fts, 0.2, "tensor", tensor_keep).items():
        assert torch.equal(ours[k], v), k
    ours = dare_merge(pre, fts, p=0.9, lam=0.5, seed=4)
    for k, v in _first_dare(pre, fts, 0.9, 0.5, seed=4).items():
        assert torch.equal(ours[k], v), k


# ----- one entry point --------------------------------------------------------------------------------
def test_every_method_is_reachable_through_merge_with_one_call(models):
    pre, fts = models
    assert set(METHODS) == {"average", "task_arithmetic", "ties", "dare", "dare_ties", "fisher", "regmean",
                            "adamerging"}
    assert close(merge("task_arithmetic", pre, fts, lam=0.4), task_arithmetic(pre, fts, lam=0.4))
    assert close(merge("ties", pre, fts, density=0.3), ties_merge(pre, fts, density=0.3))
    assert close(merge("dare", pre, fts, p=0.5, lam=0.3, seed=1), dare_merge(pre, fts, p=0.5, lam=0.3, seed=1))
    assert close(merge("dare_ties", pre, fts, p=0.5, density=0.5, seed=1),
                 dare_merge(pre, fts, p=0.5, lam=0.3, then="ties", density=0.5, seed=1))
    assert close(merge("average", pre, fts, weights=[1, 2, 3]), weighted_average(fts, weights=[1, 2, 3]))
    torch.manual_seed(0)  # models whose BatchNorm statistics stay valid: only parameters move
    cnns = [TinyCNN(width=4) for _ in range(3)]
    with torch.no_grad():
        for cnn in cnns[1:]:
            for p, p0 in zip(cnn.parameters(), cnns[0].parameters()):
                p.copy_(p0 + 0.1 * torch.randn_like(p))
    pre, fts = cnns[0].state_dict(), [m.state_dict() for m in cnns]
    x = [torch.rand(64, 1, 8, 8) for _ in cnns]
    fishers = [diagonal_fisher(m, xi) for m, xi in zip(cnns, x)]
    assert close(merge("fisher", pre, cnns, data=x), fisher_merge(fts, fishers))
    assert close(merge("regmean", pre, cnns, data=x, off_diagonal=0.8), regmean(cnns, x, off_diagonal=0.8))
    ada, _ = adamerging(TinyCNN(width=4), pre, fts, x, steps=3, lr=0.05, seed=2)
    assert close(merge("adamerging", pre, cnns, data=x, steps=3, lr=0.05, seed=2), ada)
    # models go where state dicts go; methods that need no data ignore it, so one call fits all
    for name, method in METHODS.items():
        merged = merge(name, cnns[0], cnns, data=x, **({"steps": 1} if name == "adamerging" else {}))
        assert merged.keys() == pre.keys(), name
        assert method.paper and method.needs and set(method.needs) <= {"weights", "inputs", "models"}


# ----- per-task heads (FusionBench's protocol) --------------------------------------------------------
def _task_models():
    """Three TinyViTs fine-tuned (perturbed) from one encoder, each with a head of its own size."""
    torch.manual_seed(0)
    base = TinyViT(dim=16, depth=1, heads=2)
    encoder = {k: v for k, v in base.state_dict().items() if not k.startswith("head.")}
    models = []
    for i, classes in enumerate((3, 5, 4)):
        m = TinyViT(dim=16, depth=1, heads=2, n_classes=classes)
        m.load_state_dict({**perturbed(encoder, scale=0.05, seed=i),
                           **{k: v for k, v in m.state_dict().items() if k.startswith("head.")}})
        models.append(m.eval())
    return encoder, models


def test_merge_with_per_task_heads_merges_the_encoder_only():
    encoder, models = _task_models()
    encoders = [{k: v for k, v in m.state_dict().items() if k in encoder} for m in models]
    x = [torch.rand(12, 1, 8, 8) for _ in models]
    for name in METHODS:
        hp = {"steps": 2} if name == "adamerging" else {}
        merged = merge(name, encoder, models, data=x, **hp)
        assert merged.keys() == encoder.keys(), name  # pretrained's keys: no head
        if METHODS[name].needs == ("weights",) and name not in ("dare", "dare_ties"):
            assert close(merged, merge(name, encoder, encoders, **hp)), name  # the heads are left out
    # Fisher and RegMean run each model with its own head; on the encoder keys they equal the
    # full computation restricted to those keys
    fishers = [diagonal_fisher(m, xi) for m, xi in zip(models, x)]
    restricted = [{k: f[k] for k in encoder if k in f} for f in fishers]
    assert close(merge("fisher", encoder, models, data=x), fisher_merge(encoders, restricted))
    for f, m, xi in zip(restricted, models, x):
        assert close(diagonal_fisher(m, xi, keys=list(f)), f)
    same_head = [TinyViT(dim=16, depth=1, heads=2) for _ in range(2)]
    full = regmean(same_head, x[:2])
    part = regmean(same_head, x[:2], keys=encoder)
    assert close(part, {k: full[k] for k in encoder})
    with pytest.raises(ValueError, match="lacks keys of pretrained"):
        merge("task_arithmetic", {**encoder, "extra": torch.ones(1)}, models)


def test_adamerging_scores_each_task_with_its_own_model():
    encoder, models = _task_models()
    encoders = [{k: v for k, v in m.state_dict().items() if k in encoder} for m in models]
    x = [torch.rand(30, 1, 8, 8) for _ in models]
    start, lam0 = adamerging(models, encoder, encoders, x, steps=0, lam=0.3)
    assert close(start, task_arithmetic(encoder, encoders, lam=0.3)) and (lam0 == 0.3).all()

    def entropy(enc):  # each task's entropy under its own head
        total = 0.0
        for m, xi in zip(models, x):
            head = {k: v for k, v in m.state_dict().items() if k.startswith("head.")}
            probe = TinyViT(dim=16, depth=1, heads=2, n_classes=head["head.bias"].numel())
            probe.load_state_dict({**enc, **head})
            p = probe.eval()(xi).softmax(-1)
            total += -(p * p.log()).sum(-1).mean().item()
        return total

    heads_before = [m.head.weight.clone() for m in models]
    learned, lam = adamerging(models, encoder, encoders, x, steps=40, lr=0.05, lam=0.3)
    assert learned.keys() == encoder.keys() and lam.shape[0] == 3
    assert entropy(learned) < entropy(start)
    assert all(torch.equal(m.head.weight, h) for m, h in zip(models, heads_before))  # models untouched
    # one model repeated is the single-architecture call
    cnn = TinyCNN(width=4)
    pre, fts = cnn.state_dict(), [perturbed(cnn.state_dict(), seed=s) for s in range(2)]
    xs = [torch.rand(8, 1, 8, 8)] * 2
    assert close(adamerging([cnn, cnn], pre, fts, xs, steps=3, seed=1)[0],
                 adamerging(cnn, pre, fts, xs, steps=3, seed=1)[0])
    with pytest.raises(ValueError, match="2 models for 3"):
        adamerging(models[:2], encoder, encoders, x)


def test_functions_that_run_a_model_restore_its_mode():
    torch.manual_seed(0)  # an initialisation whose Gram matrices are regular (no dead units on 6 inputs)
    cnn = TinyCNN(width=4).train()
    x = torch.rand(6, 1, 8, 8)
    sd = cnn.state_dict()
    diagonal_fisher(cnn, x)
    gram_matrices(cnn, x)
    regmean([cnn, cnn], [x, x])
    adamerging(cnn, sd, [sd, sd], [x, x], steps=1)
    assert all(m.training for m in cnn.modules())
    cnn.eval()
    diagonal_fisher(cnn, x)
    assert not any(m.training for m in cnn.modules())


def test_merges_do_not_draw_from_the_global_stream(models):
    pre, fts = models
    cnn, x = TinyCNN(width=4), [torch.rand(4, 1, 8, 8)] * 3
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dare_merge(pre, fts, p=0.5, seed=1)
    dare({"w": torch.ones(4)}, p=0.5)
    adamerging(cnn, pre, fts, x, steps=2)
    assert torch.equal(torch.rand(3), expected)


# ----- errors ---------------------------------------------------------------------------------------
def test_merging_bad_input(models):
    pre, fts = models
    with pytest.raises(ValueError, match="empty"):
        task_arithmetic(pre, [])
    with pytest.raises(ValueError, match="different keys"):
        weighted_average([pre, {k: v for k, v in pre.items() if k != "head.bias"}])
    wrong = dict(pre)
    wrong["head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="head.weight"):
        task_arithmetic(pre, [wrong])
    with pytest.raises(TypeError, match="lam must be a number"):
        task_arithmetic(pre, fts, lam="0.3")
    with pytest.raises(TypeError, match="lam must be a number"):
        task_arithmetic(pre, fts, lam=[0.3])
    with pytest.raises(TypeError, match="state dict"):
        weighted_average([TinyCNN(width=4)])
    with pytest.raises(TypeError, match="list of state dicts"):
        weighted_average(pre)
    with pytest.raises(ValueError, match="density"):
        ties_merge(pre, fts, density=0.0)
    with pytest.raises(ValueError, match="drop rate"):
        dare({"w": torch.ones(2)}, p=1.0)
    with pytest.raises(ValueError, match="unknown merging method 'tie'; did you mean 'ties'"):
        merge("tie", pre, fts)
    with pytest.raises(ValueError, match="needs the pretrained"):
        merge("ties", None, fts)
    with pytest.raises(TypeError, match=r"ties takes the hyper-parameters \['density', 'lam'"):
        merge("ties", pre, fts, alpha=0.5)
    with pytest.raises(ValueError, match="regmean needs data: unlabeled inputs"):
        merge("regmean", pre, [TinyCNN(width=4)])
    with pytest.raises(TypeError, match="fisher needs the fine-tuned models"):
        merge("fisher", pre, fts, data=[torch.rand(4, 1, 8, 8)] * 3)
    with pytest.raises(ValueError, match="one device"):
        weighted_average([fts[0], {k: v.to("meta") for k, v in fts[1].items()}])
    with pytest.raises(ValueError, match="one per model"):
        regmean([TinyCNN(width=4)], [])
    with pytest.raises(ValueError, match="one per model"):
        adamerging(TinyCNN(width=4), pre, fts, [torch.rand(4, 1, 8, 8)])
    with pytest.raises(ValueError, match="3 weights for 2"):
        weighted_average(fts[:2], weights=[1, 2, 3])


@pytest.mark.gpu
def test_merging_on_cuda_and_mixed_devices(models):
    pre, fts = models
    gpu = [{k: v.cuda() for k, v in sd.items()} for sd in fts]
    merged = ties_merge({k: v.cuda() for k, v in pre.items()}, gpu, density=0.2)
    assert all(v.device.type == "cuda" for v in merged.values())
    assert close({k: v.cpu() for k, v in merged.items()}, ties_merge(pre, fts, density=0.2), atol=1e-5)
    with pytest.raises(ValueError, match="one device"):
        weighted_average([fts[0], gpu[1]])
