"""Data-free distillation: the student never sees a real training example, only the teacher.

The survey sorts the ways of making a transfer set from the teacher alone into three families; each has
one representative here, plus a black-box variant where the teacher is only an API.

* **Noise optimisation**, DeepInversion (Yin et al., CVPR 2020, "Dreaming to Distill"): optimise a batch
  of inputs ``x`` so that the teacher assigns them chosen classes *and* the batch statistics entering
  every BatchNorm layer match the running statistics stored there,

      L(x) = CE(f_T(x), y) + a_bn * sum_l ( ||mu_l(x) - mu_l||_2 + ||sigma^2_l(x) - sigma^2_l||_2 )
             + a_tv * TV(x) + a_l2 * ||x||_2^2 .

* **Generative reconstruction**, DAFL (Chen et al., ICCV 2019, "Data-Free Learning of Student
  Networks"): a generator G(z) is trained so that the teacher is confident (one-hot loss), its features
  are strongly activated (activation loss) and its classes are balanced over the batch (information
  entropy loss),  L_G = L_oh + alpha * L_a + beta * L_ie ; the student is distilled on G's samples.

* **Adversarial exploration**, DFAD (Fang et al., 2019, "Data-Free Adversarial Distillation"): a
  min-max game in which the generator *maximises* and the student *minimises* the teacher-student
  discrepancy  L = || f_T(G(z)) - f_S(G(z)) ||_1 / K .

* **Black box**, DFME (Truong et al., CVPR 2021, "Data-Free Model Extraction"): DFAD's game when the
  teacher is an API that returns probabilities. The generator's gradient through the teacher is
  replaced by a forward-difference estimate from extra queries; every query is counted. The API, the
  logits recovered from it and the estimator are the book's one black-box toolkit, :mod:`lfm_ref.blackbox`.

Chapters: notebooks/08a_data_free_inversion.ipynb (DeepInversion, DAFL) and
notebooks/08b_data_free_adversarial.ipynb (DFAD, DFME).

The teacher is only *used*: every function here runs it in eval mode with its parameters frozen and
gives it back with the modes and ``requires_grad`` flags it had. The student and generator are
*trained* and, as after :func:`lfm_ref.fit`, left in eval mode.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..blackbox import ClassifierAPI, api_logits, zeroth_order_grad
from ..hooks import capture_outputs
from ..utils import device_of, eval_mode
from .kd import kd_loss


def _check_classes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    checks.tensor(student_logits, "student_logits", floating=True)
    checks.tensor(teacher_logits, "teacher_logits", floating=True)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"the student predicts {student_logits.shape[-1]} classes but the teacher "
                         f"{teacher_logits.shape[-1]}; data-free distillation needs the same label space")
    checks.same_shape(student_logits, teacher_logits, "student_logits", "teacher_logits")


@contextlib.contextmanager
def _used_teacher(teacher: nn.Module) -> Iterator[nn.Module]:
    """``teacher`` in eval mode with ``requires_grad=False`` inside the block; its flags come back after."""
    flags = [(p, p.requires_grad) for p in checks.module(teacher, "teacher").parameters()]
    with eval_mode(teacher):
        teacher.requires_grad_(False)
        try:
            yield teacher
        finally:
            for p, requires_grad in flags:
                p.requires_grad_(requires_grad)


# --- noise optimisation: DeepInversion ---------------------------------------------------------------

class BatchNormStatistics:
    """While active, every forward pass of ``model`` adds up DeepInversion's BatchNorm feature loss.

    For each ``BatchNorm{1,2,3}d`` layer, the mean and (biased) variance of its *input* over the batch
    (and spatial positions) are compared with the layer's ``running_mean``/``running_var``:
    ``||mu(x) - mu||_2 + ||var(x) - var||_2``. ``self.loss`` is ``weight`` times the sum of these over the
    layers and over the forward passes since the block was entered (or since ``losses`` was last cleared).
    The hooks only read: the model's mode and statistics are left alone (run it in eval mode).
    """

    def __init__(self, model: nn.Module, weight: float = 1.0):
        checks.module(model)
        self.weight = checks.number(weight, "weight", low=0)
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm layer: DeepInversion's feature loss "
                             "compares the batch statistics of synthesised inputs with the running mean and "
                             "variance that BatchNorm layers store, so the teacher needs at least one")
        if any(m.running_mean is None for m in self.layers):
            raise ValueError("a BatchNorm layer of the teacher tracks no running statistics "
                             "(track_running_stats=False), so there is nothing to match")
        self.losses: list[torch.Tensor] = []
        self.handles = []

    def _hook(self, module, inputs, output):
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))  # batch and spatial positions, per channel
        mean = x.mean(dims)                # mu_l(x), one per channel
        var = x.var(dims, unbiased=False)  # sigma^2_l(x)
        # ||mu_l(x) - mu_l||_2 + ||sigma^2_l(x) - sigma^2_l||_2
        self.losses.append(torch.linalg.vector_norm(mean - module.running_mean)
                           + torch.linalg.vector_norm(var - module.running_var))

    @property
    def loss(self) -> torch.Tensor:
        return self.weight * torch.stack(self.losses).sum()  # a_bn * sum_l (...)

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


def bn_statistics_loss(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(model(x), DeepInversion's BatchNorm loss on x)``; the model should be in eval mode."""
    with BatchNormStatistics(model) as stats:
        logits = model(x)
    return logits, stats.loss


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, an image prior (lower = smoother)."""
    checks.tensor(x, "x", floating=True)
    if x.dim() < 2:
        raise ValueError(f"x must be images (..., height, width), got shape {tuple(x.shape)}")
    # TV(x) = mean |x[i+1, j] - x[i, j]| + mean |x[i, j+1] - x[i, j]|
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _check_value_range(value_range) -> tuple[float, float]:
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise TypeError(f"value_range must be a pair (low, high), got {value_range!r:.60}")
    lo = checks.number(value_range[0], "value_range[0]")
    hi = checks.number(value_range[1], "value_range[1]")
    if not lo < hi:
        raise ValueError(f"value_range must have low < high, got {value_range!r}")
    return lo, hi


def _check_shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) == 0:
        raise TypeError(f"shape must be one input's shape as a tuple such as (1, 8, 8), got "
                        f"{shape!r:.60}")
    return tuple(checks.positive_int(n, f"shape[{i}]") for i, n in enumerate(shape))


def deep_inversion(teacher: nn.Module, targets: torch.Tensor, shape: tuple[int, ...],
                   steps: int = 300, lr: float = 0.1, bn_weight: float = 1.0,
                   tv_weight: float = 1e-2, l2_weight: float = 1e-4, jitter: int = 1,
                   value_range: tuple[float, float] = (0.0, 1.0),
                   seed: int | None = None) -> torch.Tensor:
    """Synthesise one input per entry of ``targets`` (class indices) from ``teacher``.

    ``shape`` is one input's shape, e.g. ``(1, 8, 8)``. All inputs are optimised
    together, as one batch, with Adam, because the BatchNorm loss is a statistic of the
    batch. Every step shifts the batch by up to ``jitter`` pixels (the paper's random
    jitter) so that the images do not exploit exact positions. Returns the images,
    detached, clamped to ``value_range``. ``seed`` draws the starting noise and the
    shifts from a generator of its own (without it, from torch's global stream).
    """
    checks.module(teacher, "teacher")
    checks.tensor(targets, "targets", dim=1, floating=False)
    if len(targets) < 2:
        raise ValueError("DeepInversion matches batch statistics: give >= 2 targets")
    shape, steps = _check_shape(shape), checks.positive_int(steps, "steps")
    lr = checks.positive(lr, "lr")
    bn_weight = checks.number(bn_weight, "bn_weight", low=0)
    tv_weight = checks.number(tv_weight, "tv_weight", low=0)
    l2_weight = checks.number(l2_weight, "l2_weight", low=0)
    jitter = checks.integer(jitter, "jitter", minimum=0)
    lo, hi = _check_value_range(value_range)
    if seed is not None:
        g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    else:
        g = None
    dev = device_of(teacher)
    targets = targets.to(dev)
    x = lo + (hi - lo) * torch.rand((len(targets), *shape), generator=g)  # (N, *shape)
    x = x.to(dev).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.99))
    if jitter:
        shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=g).tolist()
    else:
        shifts = [(0, 0)] * steps
    with _used_teacher(teacher), BatchNormStatistics(teacher) as stats:
        for step, (dx, dy) in enumerate(shifts):
            stats.losses.clear()
            x_in = torch.roll(x, shifts=(dx, dy), dims=(-2, -1))
            logits = teacher(x_in)
            if step == 0:
                checks.class_indices(targets, "targets", logits.shape[-1])
            squared_norm = x_in.pow(2).flatten(1).sum(1).mean()  # ||x||_2^2 per image
            loss = (F.cross_entropy(logits, targets)              # CE(f_T(x), y)
                    + bn_weight * stats.loss                      # + a_bn * R_bn(x)
                    + tv_weight * total_variation(x_in)           # + a_tv * TV(x)
                    + l2_weight * squared_norm)                   # + a_l2 * ||x||^2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
    return x.detach()


class _NoPrior:
    loss = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _bn_prior(teacher: nn.Module, weight: float):
    """DeepInversion's BatchNorm loss as an optional extra generator loss (0: the paper's method as published)."""
    return BatchNormStatistics(teacher, weight) if weight else _NoPrior()


# --- generators ----------------------------------------------------------------------------------------

class Generator(nn.Module):
    """DCGAN-style generator of ``(channels, size, size)`` images in [0, 1] from a latent ``z``.

    As in DAFL's code: a linear layer to a ``size/4`` feature map, then two upsample-convolution blocks
    with BatchNorm, and a sigmoid (our images live in [0, 1]).
    """

    def __init__(self, latent_dim: int = 64, size: int = 8, channels: int = 1, width: int = 32):
        super().__init__()
        latent_dim, size = checks.positive_int(latent_dim, "latent_dim"), checks.positive_int(size, "size")
        channels, width = checks.positive_int(channels, "channels"), checks.positive_int(width, "width")
        if size % 4:
            raise ValueError(f"size must be divisible by 4, got {size}")
        self.latent_dim, self.size, self.width = latent_dim, size, width
        self.project = nn.Linear(latent_dim, width * (size // 4) ** 2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2), nn.Conv2d(width // 2, channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        checks.tensor(z, "z", floating=True)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator expects latents of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.project(z).view(len(z), self.width, self.size // 4, self.size // 4)  # (B, width, s/4, s/4)
        return self.net(h)                                                          # (B, channels, s, s)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images from fresh standard normal latents ``z ~ N(0, I)``, drawn from ``generator``
        (on its device) or, without one, from torch's global stream on the model's device."""
        n = checks.positive_int(n, "n")
        dev = self.project.weight.device
        if generator is None:
            return self(torch.randn(n, self.latent_dim, device=dev))
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device)
        return self(z.to(dev))


# --- generative reconstruction: DAFL ------------------------------------------------------------------

def dafl_losses(teacher_logits: torch.Tensor,
                teacher_features: torch.Tensor) -> dict[str, torch.Tensor]:
    """DAFL's three generator losses, each to be *minimised* (signs as in Eqs. 4-6).

    ``one_hot``: CE between the teacher's output and its own arg-max (confident, >= 0);
    ``activation``: minus the mean absolute feature value (strong activations, <= 0);
    ``entropy``: minus the entropy of the batch-mean prediction (balanced, >= -log K).
    """
    checks.tensor(teacher_logits, "teacher_logits", dim=2, floating=True)
    checks.tensor(teacher_features, "teacher_features", floating=True)
    if len(teacher_features) != len(teacher_logits):
        rows = f"{len(teacher_logits)} and {len(teacher_features)} rows"
        raise ValueError(f"teacher_logits and teacher_features must come from the same "
                         f"batch, got {rows}")
    p_mean = teacher_logits.softmax(-1).mean(0)  # mean_i p_T(G(z_i))
    log_p_mean = torch.log(p_mean.clamp_min(1e-12))
    return {
        "one_hot": F.cross_entropy(teacher_logits, teacher_logits.argmax(-1)),  # L_oh
        "activation": -teacher_features.abs().mean(),  # L_a = -||f_T||_1 / n
        "entropy": (p_mean * log_p_mean).sum(),        # L_ie = -H(mean p_T)
    }


def _adversarial_loop(student, generator, device, steps, batch_size, student_steps, lr_student, lr_generator,
                      generator_loss: Callable, student_targets: Callable, student_loss: Callable,
                      callback=None, every: int = 0):
    """The alternation shared by DAFL, DFAD and DFME: a generator step, then student steps on fresh samples.

    Student and generator are moved to the teacher's ``device`` first. ``callback(step, student)`` is
    called every ``every`` steps (e.g. to record test accuracy). Both are left in eval mode, as
    :func:`lfm_ref.fit` leaves the model it trained.
    """
    checks.module(student, "student")
    if not isinstance(generator, Generator):
        raise TypeError(f"generator must be a lfm_ref.distill.Generator, got {type(generator).__name__}")
    steps, batch_size = checks.positive_int(steps, "steps"), checks.positive_int(batch_size, "batch_size")
    student_steps = checks.positive_int(student_steps, "student_steps")
    lr_student, lr_generator = checks.positive(lr_student, "lr_student"), checks.positive(lr_generator, "lr_generator")
    every = checks.integer(every, "every", minimum=0)
    if callback is not None and (not callable(callback) or every == 0):
        raise ValueError("callback must be a function callback(step, student), given with every >= 1")
    student.to(device)
    generator.to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr_generator)
    opt_s = torch.optim.Adam(student.parameters(), lr=lr_student)
    sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, steps)
    history = []
    for step in range(steps):
        generator.train()
        student.eval()  # the student's own BatchNorm (if any) must not adapt to the generator's batches here
        loss_g = generator_loss(generator.sample(batch_size))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        student.train()
        generator.eval()
        for _ in range(student_steps):
            with torch.no_grad():
                x = generator.sample(batch_size)
                target = student_targets(x)
            loss_s = student_loss(student(x), target)
            opt_s.zero_grad(set_to_none=True)
            loss_s.backward()
            opt_s.step()
        sched_s.step()
        history.append((loss_g.item(), loss_s.item()))
        if callback is not None and (step + 1) % every == 0:
            callback(step + 1, student)
    student.eval()
    generator.eval()
    return history


def dafl(teacher: nn.Module, student: nn.Module, generator: Generator, feature_layer: str, steps: int = 300,
         batch_size: int = 64, activation_weight: float = 0.1, entropy_weight: float = 5.0,
         lr_student: float = 3e-3, lr_generator: float = 1e-3, temperature: float = 1.0, bn_weight: float = 0.0,
         callback=None, every: int = 0) -> list[tuple[float, float]]:
    """Train ``generator`` with DAFL's losses and distil ``teacher`` into ``student`` on its samples.

    ``feature_layer`` names the teacher module whose output is the feature ``f_T`` of the activation
    loss (the penultimate layer). ``alpha=0.1`` and ``beta=5`` are the paper's MNIST weights; with its
    generator learning rate (0.2) our first runs got worse as they trained, so both learning rates are
    Adam's usual ones.
    ``bn_weight > 0`` adds DeepInversion's BatchNorm loss to the generator's (not in the paper; later
    generator methods do it). The student is distilled with KL at ``temperature`` on every fresh batch.
    Returns ``(generator loss, student loss)`` per step.
    """
    checks.module(teacher, "teacher")
    if not isinstance(feature_layer, str):
        raise TypeError(f"feature_layer must be the name of a teacher module (a str), got "
                        f"{type(feature_layer).__name__}")
    activation_weight = checks.number(activation_weight, "activation_weight", low=0)
    entropy_weight = checks.number(entropy_weight, "entropy_weight", low=0)
    temperature = checks.positive(temperature, "temperature")
    bn_weight = checks.number(bn_weight, "bn_weight", low=0)

    def generator_loss(x):
        with capture_outputs(teacher, [feature_layer]) as acts, _bn_prior(teacher, bn_weight) as prior:
            logits = teacher(x)
        losses = dafl_losses(logits, acts[feature_layer])
        return (losses["one_hot"] + activation_weight * losses["activation"]  # L_oh + alpha L_a
                + entropy_weight * losses["entropy"] + prior.loss)            # + beta L_ie (+ R_bn)

    def student_loss(s_logits, t_logits):  # kd_loss itself rejects a different number of classes
        return kd_loss(s_logits, t_logits, temperature=temperature)

    with _used_teacher(teacher):
        return _adversarial_loop(student, generator, device_of(teacher), steps, batch_size, 1, lr_student,
                                 lr_generator, generator_loss, teacher, student_loss, callback, every)


# --- adversarial exploration: DFAD, and its black-box form DFME --------------------------------------

def discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's mean absolute difference of logits, ``||f_T - f_S||_1 / K`` averaged over the batch."""
    _check_classes(student_logits, teacher_logits)
    return F.l1_loss(student_logits, teacher_logits)  # mean_i ||f_T(x_i) - f_S(x_i)||_1 / K


def dfad(teacher: nn.Module, student: nn.Module, generator: Generator, steps: int = 300,
         batch_size: int = 64, student_steps: int = 5, lr_student: float = 3e-3,
         lr_generator: float = 1e-3, bn_weight: float = 0.0, callback=None,
         every: int = 0) -> list[tuple[float, float]]:
    """DFAD's min-max game: the generator ascends the discrepancy, the student descends.

    Per step, one generator update (maximising the discrepancy, i.e. minimising its
    negative) and ``student_steps`` student updates (the paper's 5; its optimisers were
    SGD for the student and Adam for the generator, here both are Adam). ``bn_weight``
    as in :func:`dafl`. Returns ``(generator loss, student loss)`` per step.
    """
    checks.module(teacher, "teacher")
    bn_weight = checks.number(bn_weight, "bn_weight", low=0)

    def generator_loss(x):  # max_G ||T(G(z)) - S(G(z))||_1: minimise its negative
        with _bn_prior(teacher, bn_weight) as prior:
            t_logits = teacher(x)
        return -discrepancy(student(x), t_logits) + prior.loss

    with _used_teacher(teacher):
        return _adversarial_loop(student, generator, device_of(teacher), steps,
                                 batch_size, student_steps, lr_student, lr_generator,
                                 generator_loss, teacher, discrepancy, callback, every)


def dfme(api: ClassifierAPI, student: nn.Module, generator: Generator, steps: int = 300,
         batch_size: int = 64, student_steps: int = 5, directions: int = 1, eps: float = 1e-3,
         lr_student: float = 3e-3, lr_generator: float = 1e-3, callback=None,
         every: int = 0) -> list[tuple[float, float]]:
    """DFAD against a black box: the teacher's gradient w.r.t. the images is estimated.

    ``api`` is a :class:`lfm_ref.blackbox.ClassifierAPI` that answers probabilities. The
    generator loss ``-||l_T(x) - f_S(x)||_1`` is differentiated by the chain rule: its
    gradient with respect to ``x`` comes from :func:`lfm_ref.blackbox.zeroth_order_grad`
    (``directions + 1`` queries per image), then flows back into the generator exactly.
    The student is trained on the API's recovered logits (:func:`lfm_ref.blackbox.api_logits`).
    """
    if not isinstance(api, ClassifierAPI) or api.output != "probs":
        output = f" with output={api.output!r}" if isinstance(api, ClassifierAPI) else ""
        raise TypeError("api must be a lfm_ref.blackbox.ClassifierAPI answering probabilities "
                        f"(output='probs'), got {type(api).__name__}{output}")
    directions, eps = checks.positive_int(directions, "directions"), checks.positive(eps, "eps")

    def teacher_logits(x):  # l_T(x) = log p - mean(log p), from the API's answers
        return api_logits(api, x)

    def generator_loss(x):
        with torch.no_grad():
            def f(inputs):  # the per-example discrepancy, with the student fixed
                return (teacher_logits(inputs) - student(inputs)).abs().mean(-1)
            grad_x = zeroth_order_grad(f, x.detach(), directions, eps)  # ~ dL/dx, from queries
        return -(grad_x * x).sum() / len(x)  # surrogate: its gradient w.r.t. x is -grad_x / B

    return _adversarial_loop(student, generator, api.device, steps, batch_size, student_steps,
                             lr_student, lr_generator, generator_loss, teacher_logits, discrepancy,
                             callback, every)
