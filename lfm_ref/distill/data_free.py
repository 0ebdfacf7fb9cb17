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
  replaced by a forward-difference estimate from extra queries; every query is counted.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..blackbox import ClassifierAPI, api_logits, zeroth_order_grad
from ..hooks import capture_outputs
from ..utils import device_of


def _check_classes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"the student predicts {student_logits.shape[-1]} classes but the teacher "
                         f"{teacher_logits.shape[-1]}; data-free distillation needs the same label space")


# --- noise optimisation: DeepInversion ---------------------------------------------------------------

class BatchNormStatistics:
    """While active, every forward pass of ``model`` adds up DeepInversion's BatchNorm feature loss.

    For each ``BatchNorm{1,2,3}d`` layer, the mean and (biased) variance of its *input* over the batch
    (and spatial positions) are compared with the layer's ``running_mean``/``running_var``:
    ``||mu(x) - mu||_2 + ||var(x) - var||_2``. ``self.loss`` is ``weight`` times the sum over layers of the
passes since the block was entered (or since ``losses`` was last cleared).
    """

    def __init__(self, model: nn.Module, weight: float = 1.0):
        self.weight = weight
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
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.losses.append(torch.linalg.vector_norm(mean - module.running_mean)
                           + torch.linalg.vector_norm(var - module.running_var))

    @property
    def loss(self) -> torch.Tensor:
        return self.weight * torch.stack(self.losses).sum()

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
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def deep_inversion(teacher: nn.Module, targets: torch.Tensor, shape: tuple[int, ...], steps: int = 300,
                   lr: float = 0.1, bn_weight: float = 1.0, tv_weight: float = 1e-2, l2_weight: float = 1e-4,
                   jitter: int = 1, value_range: tuple[float, float] = (0.0, 1.0),
                   seed: int | None = None) -> torch.Tensor:
    """Synthesise one input per entry of ``targets`` (class indices) from ``teacher`` alone.

    ``shape`` is one input's shape, e.g. ``(1, 8, 8)``. All inputs are optimised together, as one batch,
    with Adam, because the BatchNorm loss is a statistic of the batch. Every step shifts the batch by up
    to ``jitter`` pixels (the paper's random jitter) so that the images do not exploit exact positions.
    Returns the images, detached, clamped to ``value_range``.
    """
    if targets.dim() != 1 or targets.dtype != torch.long:
        raise TypeError(f"targets must be a 1-d tensor of class indices (torch.long), got "
                        f"{targets.dtype} of shape {tuple(targets.shape)}")
    if len(targets) < 2:
        raise ValueError("DeepInversion matches batch statistics, so it needs at least 2 targets")
    teacher.eval().requires_grad_(False)
    dev = device_of(teacher)
    targets = targets.to(dev)
    g = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    lo, hi = value_range
    x = (lo + (hi - lo) * torch.rand((len(targets), *shape), generator=g)).to(dev).requires_grad_(True)
    stats = BatchNormStatistics(teacher)
    optimizer = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.99))
    shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=g).tolist() if jitter else [(0, 0)] * steps
    with stats:
        for dx, dy in shifts:
            stats.losses.clear()
            x_in = torch.roll(x, shifts=(dx, dy), dims=(-2, -1))
            logits = teacher(x_in)
            squared_norm = x_in.pow(2).flatten(1).sum(1).mean()                 # ||x||_2^2 per image
            loss = (F.cross_entropy(logits, targets) + bn_weight * stats.loss     # class + feature statistics
                    + tv_weight * total_variation(x_in) + l2_weight * squared_norm)
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
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator expects latents of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.project(z).view(len(z), self.width, self.size // 4, self.size // 4)
        return self.net(h)

    def sample(self, n: int) -> torch.Tensor:
        """``n`` images from fresh standard normal latents."""
        return self(torch.randn(n, self.latent_dim, device=self.project.weight.device))


# --- generative reconstruction: DAFL ------------------------------------------------------------------

def dafl_losses(teacher_logits: torch.Tensor, teacher_features: torch.Tensor) -> dict[str, torch.Tensor]:
    """DAFL's three generator losses, each to be *minimised* (signs as in the paper, Eqs. 4-6).

    ``one_hot``: CE between the teacher's output and its own arg-max (confident outputs, >= 0);
    ``activation``: minus the mean absolute feature value (strong activations, <= 0);
    ``entropy``: minus the entropy of the batch-averaged prediction (balanced classes, >= -log K).
    """
    p_mean = teacher_logits.softmax(-1).mean(0)
    return {
        "one_hot": F.cross_entropy(teacher_logits, teacher_logits.argmax(-1)),        # L_oh
        "activation": -teacher_features.abs().mean(),                                   # L_a = -||f_T||_1 / n
        "entropy": (p_mean * torch.log(p_mean.clamp_min(1e-12))).sum(),                 # L_ie = -H(mean p_T)
    }


def _adversarial_loop(student, generator, device, steps, batch_size, student_steps, lr_student, lr_generator,
                      generator_loss: Callable, student_targets: Callable, student_loss: Callable,
                      callback=None, every: int = 0):
    """The alternation shared by DAFL, DFAD and DFME: a generator step, then student steps on fresh samples.

    Student and generator are moved to the teacher's ``device`` first. ``callback(step, student)`` is
    called every ``every`` steps (e.g. to record test accuracy).
    """
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
        if callback is not None and every and (step + 1) % every == 0:
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
    from .kd import kd_loss

    teacher.eval().requires_grad_(False)

    def generator_loss(x):
        with capture_outputs(teacher, [feature_layer]) as acts, _bn_prior(teacher, bn_weight) as prior:
            logits = teacher(x)
        losses = dafl_losses(logits, acts[feature_layer])
        return (losses["one_hot"] + activation_weight * losses["activation"] + entropy_weight * losses["entropy"]
                + prior.loss)

    def student_loss(s_logits, t_logits):  # kd_loss itself rejects a different number of classes
        return kd_loss(s_logits, t_logits, temperature=temperature)

    return _adversarial_loop(student, generator, device_of(teacher), steps, batch_size, 1, lr_student, lr_generator,
                             generator_loss, teacher, student_loss, callback, every)


# --- adversarial exploration: DFAD, and its black-box form DFME --------------------------------------

def discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's mean absolute difference of logits, ``||f_T - f_S||_1 / K`` averaged over the batch."""
    _check_classes(student_logits, teacher_logits)
    return F.l1_loss(student_logits, teacher_logits)


def dfad(teacher: nn.Module, student: nn.Module, generator: Generator, steps: int = 300, batch_size: int = 64,
         student_steps: int = 5, lr_student: float = 3e-3, lr_generator: float = 1e-3, bn_weight: float = 0.0,
         callback=None, every: int = 0) -> list[tuple[float, float]]:
    """The DFAD min-max game: the generator ascends, the student descends the logit discrepancy.

    Per step, one generator update (maximising the discrepancy, i.e. minimising its negative) and
    ``student_steps`` student updates (the paper's 5; its optimisers were SGD for the student and Adam
    for the generator, here both are Adam). ``bn_weight`` as in :func:`dafl`.
    Returns ``(generator loss, student loss)`` per step.
    """
    teacher.eval().requires_grad_(False)

    def generator_loss(x):
        with _bn_prior(teacher, bn_weight) as prior:
            t_logits = teacher(x)
        return -discrepancy(student(x), t_logits) + prior.loss  # the generator seeks where the student is wrong

    return _adversarial_loop(student, generator, device_of(teacher), steps, batch_size, student_steps, lr_student,
                             lr_generator, generator_loss, teacher, discrepancy, callback, every)


def dfme(api: ClassifierAPI, student: nn.Module, generator: Generator, steps: int = 300, batch_size: int = 64,
         student_steps: int = 5, directions: int = 1, eps: float = 1e-3, lr_student: float = 3e-3,
         lr_generator: float = 1e-3, callback=None, every: int = 0) -> list[tuple[float, float]]:
    """DFAD against a black box: the teacher's gradient w.r.t. the generated images is estimated.

    The generator loss ``-||l_T(x) - f_S(x)||_1`` is differentiated by the chain rule: its gradient with
    respect to ``x`` comes from :func:`zeroth_order_grad` (``directions + 1`` queries per image), then
    flows back into the generator exactly. The student is trained on the API's recovered logits.
    """
    def generator_loss(x):
        with torch.no_grad():
            def f(inputs):  # the per-example discrepancy, with the student fixed
                return (api_logits(api, inputs) - student(inputs)).abs().mean(-1)
            grad_x = zeroth_order_grad(f, x.detach(), directions, eps)
        return -(grad_x * x).sum() / len(x)  # surrogate whose gradient w.r.t. x is -grad_x / B

    return _adversarial_loop(student, generator, api.device, steps, batch_size, student_steps, lr_student,
                             lr_generator, generator_loss, lambda x: api_logits(api, x), discrepancy, callback, every)
