"""Data-free distillation (lfm_ref.distill.data_free): defining properties, the papers' formulas, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfm_ref import seed_everything, zoo
from lfm_ref.blackbox import ClassifierAPI, api_logits, zeroth_order_grad
from lfm_ref.distill import (
    BatchNormStatistics,
    Generator,
    bn_statistics_loss,
    dafl,
    dafl_losses,
    deep_inversion,
    dfad,
    dfme,
    discrepancy,
    total_variation,
)
from lfm_ref.zoo.models import TinyCNN, TinyMLP

# dfme(ClassifierAPI(tiny-cnn), TinyCNN(width=4), Generator(), steps=2, batch_size=16, student_steps=2)
# after seed_everything(2), run with the old distill.BlackBoxAPI at commit a29603b (the generator's loss
# divides query differences by eps: a loose tolerance across CPUs)
DFME_BEFORE_THE_MOVE = [(-4.471184730529785, 2.3127357959747314), (4.428219318389893, 2.279201030731201)]


@pytest.fixture(scope="module")
def teacher():
    return zoo.load("tiny-cnn", device="cpu")


def _biased_stats(x):
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=False)


# ----- DeepInversion -----------------------------------------------------------------------------
def test_bn_loss_is_zero_for_inputs_with_exactly_the_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    x = torch.randn(32, 3, 6, 6) * 2 + 1
    # give every BatchNorm layer, in order, the statistics of exactly what enters it on x
    model[0].running_mean, model[0].running_var = _biased_stats(x)
    model[3].running_mean, model[3].running_var = _biased_stats(model[:3](x).detach())
    _, loss = bn_statistics_loss(model, x)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    # and it is the paper's sum of two 2-norms per layer once the statistics differ
    shifted = x + 0.5
    _, loss = bn_statistics_loss(model, shifted)
    h = model[:3](shifted)
    expected = sum(torch.linalg.vector_norm(m - bn.running_mean) + torch.linalg.vector_norm(v - bn.running_var)
                   for (m, v), bn in ((_biased_stats(shifted), model[0]), (_biased_stats(h), model[3])))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_bn_loss_separates_real_digits_from_noise(teacher):
    from lfm_ref.data import digits_task

    x, _ = digits_task("digits", "train")
    real = bn_statistics_loss(teacher, x[:256])[1]
    noise = bn_statistics_loss(teacher, torch.rand(256, 1, 8, 8))[1]
    assert real < noise / 5


def test_bn_statistics_weight_and_gradient_reach_the_inputs(teacher):
    x = torch.rand(16, 1, 8, 8, requires_grad=True)
    with BatchNormStatistics(teacher, weight=3.0) as weighted:
        teacher(x)
    with BatchNormStatistics(teacher) as plain:
        teacher(x)
    assert torch.allclose(weighted.loss, 3 * plain.loss)
    plain.loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_deep_inversion_fits_targets_and_statistics(teacher):
    targets = torch.arange(40) % 10
    start = bn_statistics_loss(teacher, torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)))[1]
    x = deep_inversion(teacher, targets, (1, 8, 8), steps=60, seed=0)
    assert x.shape == (40, 1, 8, 8) and x.min() >= 0 and x.max() <= 1 and not x.requires_grad
    with torch.no_grad():
        logits, end = bn_statistics_loss(teacher, x)
    assert (logits.argmax(-1) == targets).float().mean() > 0.9
    assert end < start / 2
    # a seed makes it reproducible
    assert torch.equal(x, deep_inversion(teacher, targets, (1, 8, 8), steps=60, seed=0))


def test_total_variation():
    assert total_variation(torch.full((2, 1, 4, 4), 0.3)).item() == 0
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    assert total_variation(checker.float().view(1, 1, 4, 4)).item() == pytest.approx(2.0)


def test_deep_inversion_errors(teacher):
    no_batchnorm = TinyMLP()
    with pytest.raises(ValueError, match="BatchNorm"):
        deep_inversion(no_batchnorm, torch.arange(4), (1, 8, 8), steps=1)
    with pytest.raises(ValueError, match="running statistics"):
        BatchNormStatistics(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        deep_inversion(teacher, torch.zeros(4), (1, 8, 8), steps=1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        deep_inversion(teacher, torch.tensor([3, 10]), (1, 8, 8), steps=1)
    with pytest.raises(ValueError, match=">= 2 targets"):
        deep_inversion(teacher, torch.tensor([3]), (1, 8, 8), steps=1)


# ----- DAFL ---------------------------------------------------------------------------------------
def test_dafl_losses_follow_the_paper():
    torch.manual_seed(0)
    logits, features = torch.randn(12, 10), torch.randn(12, 64)
    losses = dafl_losses(logits, features)
    p = logits.softmax(-1)
    assert torch.allclose(losses["one_hot"], -p.max(-1).values.log().mean(), atol=1e-6)   # CE to own arg-max
    assert torch.allclose(losses["activation"], -features.abs().mean())                     # -||f||_1 / n
    p_mean = p.mean(0)
    assert torch.allclose(losses["entropy"], (p_mean * p_mean.log()).sum(), atol=1e-6)     # -H(mean p)
    # signs: one-hot >= 0, activation <= 0, -log K <= entropy <= 0
    assert losses["one_hot"] >= 0 and losses["activation"] <= 0
    assert -math.log(10) - 1e-6 <= losses["entropy"] <= 0


def test_dafl_entropy_loss_rewards_balanced_classes():
    balanced = 20 * torch.eye(10)                  # every class predicted once, confidently
    collapsed = 20 * torch.eye(10)[[3] * 10]       # always class 3
    assert dafl_losses(balanced, torch.ones(10, 4))["entropy"].item() == pytest.approx(-math.log(10), abs=1e-4)
    assert dafl_losses(collapsed, torch.ones(10, 4))["entropy"].item() == pytest.approx(0.0, abs=1e-4)


def test_dafl_trains_generator_and_student_but_not_the_teacher(teacher):
    seed_everything(0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, generator = TinyCNN(width=4), Generator()
    calls = []
    history = dafl(teacher, student, generator, "features", steps=4, batch_size=16, bn_weight=1.0,
                   callback=lambda step, s: calls.append(step), every=2)
    assert len(history) == 4 and calls == [2, 4]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    with pytest.raises(ValueError, match="same number of classes"):
        dafl(teacher, TinyCNN(n_classes=5, width=4), Generator(), "features", steps=1, batch_size=4)


def test_generator_shapes_and_errors():
    g = Generator(latent_dim=16, size=8)
    x = g.sample(5)
    assert x.shape == (5, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    with pytest.raises(ValueError, match="latents of shape"):
        g(torch.randn(5, 3))
    with pytest.raises(ValueError, match="divisible by 4"):
        Generator(size=6)


# ----- DFAD and DFME ------------------------------------------------------------------------------
def test_discrepancy_is_the_mean_absolute_logit_difference():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    assert torch.allclose(discrepancy(s, t), (s - t).abs().sum(-1).mean() / 10)
    assert discrepancy(t, t) == 0
    with pytest.raises(ValueError, match="same label space"):
        discrepancy(torch.randn(8, 5), t)


def test_dfad_generator_ascends_the_discrepancy(teacher):
    seed_everything(0)
    student, generator = TinyCNN(width=4), Generator()
    history = dfad(teacher, student, generator, steps=3, batch_size=16, student_steps=1)
    gen_losses = [g for g, _ in history]
    assert all(g <= 0 for g in gen_losses)   # the generator minimises minus the discrepancy
    with pytest.raises(ValueError, match="same label space"):
        dfad(teacher, TinyCNN(n_classes=5, width=4), Generator(), steps=1, batch_size=4, student_steps=1)


def test_classifier_api_counts_queries_and_gives_no_gradient():
    """lfm_ref.blackbox.ClassifierAPI, the book's one black-box wrapper: answers carry no graph even when the
    model and the inputs require gradients, every input is billed, and the caller's model is left as it was
    (mode and requires_grad flags: the old distill.BlackBoxAPI froze it for good)."""
    model = zoo.load("tiny-cnn", device="cpu").train()  # a private copy, trainable and in train mode
    assert all(p.requires_grad for p in model.parameters())
    api = ClassifierAPI(model)
    x = torch.rand(7, 1, 8, 8, requires_grad=True)
    probs = api(x)
    assert api.queries == 7 and not probs.requires_grad and probs.grad_fn is None
    assert torch.allclose(probs.sum(-1), torch.ones(7))
    assert model.training and all(p.requires_grad for p in model.parameters())  # untouched
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        model.eval()
        logits = model(x)
        model.train()
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)  # answered in eval mode
    assert torch.allclose(api_logits(api, x), logits - logits.mean(-1, keepdim=True), atol=1e-4)
    assert api.queries == 14
    labels = ClassifierAPI(model, output="label")(x)
    assert labels.dtype == torch.long and torch.equal(labels, logits.argmax(-1))
    with pytest.raises(ValueError, match="probabilities"):
        api_logits(ClassifierAPI(model, output="label"), x)
    with pytest.raises(ValueError, match=r"output must be one of \['probs', 'label'\]"):
        ClassifierAPI(model, output="logits")


def test_zeroth_order_gradient_is_unbiased_for_a_linear_function():
    torch.manual_seed(0)
    a = torch.randn(3, 1, 4, 4)
    x = torch.rand(3, 1, 4, 4)

    def f(inputs):
        return (inputs * a.repeat(len(inputs) // 3, 1, 1, 1)).flatten(1).sum(-1)

    g = zeroth_order_grad(f, x, directions=4000, eps=1e-2, generator=torch.Generator().manual_seed(0))
    cos = F.cosine_similarity(g.flatten(1), a.flatten(1)).min()
    assert cos > 0.95
    assert torch.allclose(g.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=0.15)


def test_dfme_counts_every_query_and_never_takes_a_teacher_gradient():
    seed_everything(0)
    teacher = zoo.load("tiny-cnn", device="cpu")  # trainable: the API, not a frozen flag, stops gradients
    assert all(p.requires_grad and p.grad is None for p in teacher.parameters())
    api = ClassifierAPI(teacher)
    steps, batch, directions, student_steps = 3, 8, 2, 2
    dfme(api, TinyCNN(width=4), Generator(), steps=steps, batch_size=batch, directions=directions,
         student_steps=student_steps)
    # per step: (directions + 1) queries per image for the gradient estimate, then one per student image
    assert api.queries == steps * batch * (directions + 1 + student_steps)
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_dfme_gives_the_numbers_it_gave_with_the_old_api():
    """The move from distill.BlackBoxAPI (which froze the model for good) to blackbox.ClassifierAPI changed
    no number: the first generator and student losses of a seeded run, recorded before the move."""
    seed_everything(2)
    history = dfme(ClassifierAPI(zoo.load("tiny-cnn", device="cpu")), TinyCNN(width=4), Generator(), steps=2,
                   batch_size=16, student_steps=2)
    # the first step's losses agree to 1e-4 on every CPU tried; the second follows one student update,
    # whose floating-point summation order differs between CPUs (1.4% apart on an AMD EPYC)
    assert list(history[0]) == pytest.approx(list(DFME_BEFORE_THE_MOVE[0]), rel=1e-3)
    assert list(history[1]) == pytest.approx(list(DFME_BEFORE_THE_MOVE[1]), rel=5e-2)


# ----- modes: a function that only uses the teacher gives it back as it found it -----------------------
def _trainable_teacher():
    return zoo.load("tiny-cnn", device="cpu").train()


@pytest.mark.parametrize("method", ["deep_inversion", "dafl", "dfad"])
def test_the_teacher_comes_back_in_its_mode_and_trainable(method):
    teacher = _trainable_teacher()
    seed_everything(0)
    if method == "deep_inversion":
        deep_inversion(teacher, torch.arange(8) % 10, (1, 8, 8), steps=2, seed=0)
    elif method == "dafl":
        dafl(teacher, TinyCNN(width=4), Generator(), "features", steps=2, batch_size=8, bn_weight=1.0)
    else:
        dfad(teacher, TinyCNN(width=4), Generator(), steps=2, batch_size=8, student_steps=1, bn_weight=1.0)
    assert teacher.training and all(m.training for m in teacher.modules())
    assert all(p.requires_grad and p.grad is None for p in teacher.parameters())


def test_inversion_runs_the_teacher_in_eval_mode():
    """In train mode the BatchNorm layers would normalise with the synthetic batch's own statistics (and
    update their running ones): the teacher must be in eval mode inside, whatever mode it came in."""
    a, b = _trainable_teacher(), _trainable_teacher().eval()
    stats = {k: v.clone() for k, v in a.state_dict().items()}
    targets = torch.arange(8) % 10
    assert torch.equal(deep_inversion(a, targets, (1, 8, 8), steps=3, seed=0),
                       deep_inversion(b, targets, (1, 8, 8), steps=3, seed=0))
    assert all(torch.equal(stats[k], v) for k, v in a.state_dict().items())


def test_generator_sample_takes_a_generator_and_leaves_the_global_stream_alone():
    g = Generator(latent_dim=8).eval()
    state = torch.get_rng_state()
    a = g.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, g.sample(4, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(5)
    b = g.sample(4)  # without one: the global stream, as before
    torch.manual_seed(5)
    assert torch.equal(b, g(torch.randn(4, 8)))


@pytest.mark.gpu
def test_data_free_methods_run_on_cuda(teacher):
    gpu_teacher = zoo.load("tiny-cnn", device="cuda")
    x = deep_inversion(gpu_teacher, torch.arange(20) % 10, (1, 8, 8), steps=5, seed=0)
    assert x.device.type == "cuda"
    student = TinyCNN(width=4)
    dfad(gpu_teacher, student, Generator(), steps=2, batch_size=8, student_steps=1, bn_weight=1.0)
    dfme(ClassifierAPI(gpu_teacher), student, Generator(), steps=2, batch_size=8, student_steps=1)
    assert next(student.parameters()).device.type == "cuda"
