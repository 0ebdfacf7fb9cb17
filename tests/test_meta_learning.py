"""Chapter 14, learning to learn (lfm_ref.meta): MAML, FOMAML, ANIL, Reptile and prototypical networks.

The proofs: MAML's inner step is a hand-computed gradient step; its second-order meta-gradient matches
finite differences; FOMAML's is MAML's with the Hessian term dropped; Reptile with one inner step and outer
learning rate 1 is one SGD step; ProtoNet logits are negative squared distances to class means; vmapped
tasks give a Python loop's loss; MAML's meta-gradient equals the ``higher`` library's.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfm_ref import fit
from lfm_ref.data.few_shot import META_TEST_DIGITS, few_shot_class_name, few_shot_classes
from lfm_ref.meta import (
    Episode,
    EpisodeSampler,
    SineNet,
    SinusoidTasks,
    adapted_query_outputs,
    few_shot_accuracy,
    finetune_logits,
    inner_loop,
    maml_objective,
    mean_and_interval,
    mse_over_steps,
    nearest_neighbour_logits,
    protonet_episode_logits,
    protonet_logits,
    prototypes,
    reptile_objective,
)


def _sines(n_tasks=3, k=5, seed=0, dtype=torch.float32):
    e = SinusoidTasks(k, q_query=7).batch(n_tasks, torch.Generator().manual_seed(seed))
    return Episode(*(t.to(dtype) for t in (e.support_x, e.support_y, e.query_x, e.query_y)))


def _tiny(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return SineNet(hidden=4).to(dtype)


def _grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()))


def test_inner_step_is_a_hand_computed_gradient_step():
    # y = w x + b with MSE: dL/dw = 2 mean((wx + b - y) x), dL/db = 2 mean(wx + b - y)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(-0.2)
    x, y = torch.tensor([[1.0], [2.0], [-1.0]]), torch.tensor([[0.3], [1.0], [2.0]])
    params = dict(model.named_parameters())
    out = inner_loop(model, params, (x, y), steps=1, lr=0.1)
    r = 0.5 * x - 0.2 - y
    assert torch.allclose(out["weight"], torch.tensor([[0.5 - 0.1 * 2 * (r * x).mean()]]))
    assert torch.allclose(out["bias"], torch.tensor([-0.2 - 0.1 * 2 * r.mean()]))
    assert model.weight.item() == 0.5  # the model's own weights are left alone
    two = inner_loop(model, params, (x, y), steps=2, lr=0.1)
    again = inner_loop(model, out, (x, y), steps=1, lr=0.1)
    assert all(torch.allclose(two[n], again[n]) for n in two)
    assert inner_loop(model, params, (x, y), steps=0, lr=0.1)["weight"] is params["weight"]


def test_second_order_meta_gradient_matches_finite_differences():
    model, batch = _tiny(dtype=torch.float64), _sines(dtype=torch.float64)
    objective = maml_objective(steps=2, lr=0.05)
    analytic = torch.cat([g.flatten() for g in _grads(model, objective(model, batch))])
    params = list(model.parameters())
    flat = torch.cat([p.detach().flatten() for p in params])
    eps, numeric = 1e-6, torch.zeros_like(flat)

    def loss_at(vector):
        torch.nn.utils.vector_to_parameters(vector, params)
        return objective(model, batch).item()

    for i in range(len(flat)):
        e = torch.zeros_like(flat)
        e[i] = eps
        numeric[i] = (loss_at(flat + e) - loss_at(flat - e)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, params)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-7)
    # and the first-order meta-gradient differs from it: the second-order term is not negligible here
    fo = torch.cat([g.flatten() for g in _grads(model, maml_objective(2, 0.05, first_order=True)(model, batch))])
    assert not torch.allclose(fo, analytic, rtol=1e-3)


def test_first_order_maml_is_maml_without_the_second_order_term():
    # one inner step: MAML's meta-gradient is (I - alpha H_support) g, FOMAML's is g = grad L_query(theta')
    model, batch, alpha = _tiny(dtype=torch.float64), _sines(n_tasks=1, dtype=torch.float64), 0.05
    task = batch.task(0)
    names = [n for n, _ in model.named_parameters()]
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def unflat(v):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = v[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def loss(v, x, y):
        return F.mse_loss(torch.func.functional_call(model, unflat(v), (x,)), y)

    g_s = torch.func.grad(loss)(theta, *task.support)
    theta_prime = theta - alpha * g_s
    g_q = torch.func.grad(loss)(theta_prime, *task.query)
    hessian = torch.func.hessian(loss)(theta, *task.support)
    maml = torch.cat([g.flatten() for g in _grads(model, maml_objective(1, alpha)(model, batch))])
    fomaml = torch.cat([g.flatten() for g in _grads(model, maml_objective(1, alpha, first_order=True)(model, batch))])
    assert torch.allclose(fomaml, g_q, atol=1e-10)
    assert torch.allclose(maml, g_q - alpha * hessian @ g_q, atol=1e-10)


def test_reptile_with_one_inner_step_and_outer_rate_one_is_one_sgd_step():
    model, batch, alpha = _tiny(), _sines(n_tasks=4), 0.05
    joint = _tiny()  # same seed: same weights
    loss = reptile_objective(steps=1, lr=alpha)(model, batch)
    torch.optim.SGD(model.parameters(), lr=1.0).zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1.0 * p.grad  # theta <- theta + 1 * mean_i (theta'_i - theta)
    # one SGD step at alpha on the mean of the tasks' support losses
    support = torch.stack([F.mse_loss(joint(batch.support_x[i]), batch.support_y[i]) for i in range(4)]).mean()
    torch.optim.SGD(joint.parameters(), lr=alpha).zero_grad()
    support.backward()
    torch.optim.SGD(joint.parameters(), lr=alpha).step()
    for a, b in zip(model.parameters(), joint.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    q = torch.randn(4, 3, generator=g)
    c = prototypes(z, labels, 3)
    for k in range(3):
        assert torch.allclose(c[k], z[labels == k].mean(0))
    logits = protonet_logits(q, c)
    for i in range(4):
        for k in range(3):
            assert torch.isclose(logits[i, k], -((q[i] - z[labels == k].mean(0)) ** 2).sum())
    batched = protonet_logits(torch.stack([q, q]), prototypes(torch.stack([z, z]), torch.stack([labels] * 2), 3))
    assert torch.allclose(batched[1], logits)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_tasks_give_the_loss_and_gradient_of_a_python_loop(first_order):
    model, batch = _tiny(), _sines(n_tasks=5)
    vmapped = maml_objective(2, 0.05, first_order=first_order)(model, batch)
    looped = []
    for i in range(batch.n_tasks):
        t = batch.task(i)
        adapted = inner_loop(model, dict(model.named_parameters()), t, 2, 0.05, first_order)
        looped.append(F.mse_loss(torch.func.functional_call(model, adapted, (t.query_x,)), t.query_y))
    looped = torch.stack(looped).mean()
    assert torch.allclose(vmapped, looped, atol=1e-6)
    for a, b in zip(_grads(model, vmapped), _grads(model, looped)):
        assert torch.allclose(a, b, atol=1e-5)


def test_maml_meta_gradient_equals_higher():
    higher = pytest.importorskip("higher")
    model, batch, alpha = _tiny(dtype=torch.float64), _sines(n_tasks=1, dtype=torch.float64), 0.05
    ours = _grads(model, maml_objective(steps=3, lr=alpha)(model, batch))
    task = batch.task(0)
    with higher.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=alpha),
                              copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(F.mse_loss(fmodel(task.support_x), task.support_y))
        theirs = _grads(model, F.mse_loss(fmodel(task.query_x), task.query_y))
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-10)


def test_anil_adapts_the_head_only_and_trains_the_body_through_it():
    model, batch = _tiny(), _sines(n_tasks=2)
    body = [p for n, p in model.named_parameters() if n.startswith("body")]
    grads = torch.autograd.grad(maml_objective(1, 0.05, adapt="head")(model, batch), body)
    assert all(g.abs().sum() > 0 for g in grads)  # the meta-gradient reaches the frozen-in-task body
    adapted = inner_loop(model, {n: p for n, p in model.named_parameters() if n.startswith("head")},
                         batch.task(0), 1, 0.05)
    assert set(adapted) == {"head.weight", "head.bias"}


def test_few_shot_classes_hold_out_digits_and_episodes_relabel():
    x, y = few_shot_classes("meta-train")
    xt, yt = few_shot_classes("meta-test")
    assert x.shape[1:] == (1, 8, 8) and len(y.unique()) == 56 and len(yt.unique()) == 24
    assert not set(y.tolist()) & set(yt.tolist())
    assert set((yt % 10).unique().tolist()) == set(META_TEST_DIGITS)
    assert few_shot_class_name(13) == "3 rot90"
    sampler = EpisodeSampler(xt, yt, n_way=5, k_shot=2, q_query=3)
    a = sampler.batch(4, torch.Generator().manual_seed(1))
    b = sampler.batch(4, torch.Generator().manual_seed(1))
    assert torch.equal(a.support_x, b.support_x)
    assert a.support_x.shape == (4, 10, 1, 8, 8) and a.query_y.shape == (4, 15) and a.n_way == 5
    assert torch.equal(a.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))


def test_fit_meta_trains_a_sine_regressor_through_a_loader_of_episodes():
    torch.manual_seed(0)
    net, tasks = SineNet(), SinusoidTasks(10)
    test = SinusoidTasks(10, q_query=50).batch(100, torch.Generator().manual_seed(9))
    before = mse_over_steps(net, test, 1, 0.01)
    losses = fit(net, tasks.loader(10, 150, seed=0), loss_fn=maml_objective(1, 0.01), lr=1e-2, device="cpu")
    after = mse_over_steps(net, test, 1, 0.01)
    assert len(losses) == 150 and after[1] < 0.8 * before[1]
    assert not net.training


def test_few_shot_accuracy_is_the_mean_with_a_95_percent_interval():
    sampler = EpisodeSampler(*few_shot_classes("meta-test"), n_way=3, k_shot=1, q_query=2)
    episodes = [sampler.batch(5, torch.Generator().manual_seed(i)) for i in range(2)]

    def oracle(e):  # logits that put the true label first: accuracy 1
        return F.one_hot(e.query_y, e.n_way).float()

    assert few_shot_accuracy(oracle, episodes) == (1.0, 0.0)
    m, h = mean_and_interval([0.0, 1.0, 1.0, 0.0])
    assert m == 0.5 and math.isclose(h, 1.96 * torch.tensor([0.0, 1, 1, 0]).std().item() / 2, rel_tol=1e-6)


def test_baselines_and_meta_test_predictors_return_query_logits():
    sampler = EpisodeSampler(*few_shot_classes("meta-test"), n_way=3, k_shot=2, q_query=2)
    e = sampler.batch(2, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    for logits in (protonet_episode_logits(enc, e), nearest_neighbour_logits(enc, e),
                   finetune_logits(enc, e, 8, steps=3, lr=0.1),
                   adapted_query_outputs(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), e, 2, 0.1)):
        assert logits.shape == (2, 6, 3)
    state = torch.random.get_rng_state()
    enc.train()
    finetune_logits(enc, e, 8, steps=2, lr=0.1)
    assert torch.equal(state, torch.random.get_rng_state()) and enc.training  # RNG and mode kept
    # 1-shot nearest neighbour is nearest centroid (the centroid of one example is the example)
    one = EpisodeSampler(*few_shot_classes("meta-test"), 3, 1, 2).batch(3, torch.Generator().manual_seed(0))
    assert torch.allclose(nearest_neighbour_logits(enc, one), protonet_episode_logits(enc, one))


@pytest.mark.gpu
def test_batched_inner_loop_runs_on_cuda_and_matches_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model, batch = _tiny(), _sines(n_tasks=64, k=10)
    cpu = maml_objective(3, 0.05)(model, batch)
    gpu_model = _tiny().cuda()
    gpu = maml_objective(3, 0.05)(gpu_model, batch)  # the objective moves the episodes to the model's device
    assert gpu.device.type == "cuda" and torch.allclose(cpu, gpu.cpu(), atol=1e-4)
    sampler = EpisodeSampler(*few_shot_classes("meta-test"), 5, 1, 5)
    e = sampler.batch(128, torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)).cuda()
    assert adapted_query_outputs(net, e, 5, 0.1).shape == (128, 25, 5)
