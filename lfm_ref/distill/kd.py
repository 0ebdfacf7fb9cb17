"""Response-based knowledge distillation (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a
Neural Network", arXiv:1503.02531) and its repeated form, born-again networks (Furlanello et al., ICML 2018).

The student matches the teacher's temperature-softened class distribution:

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T changes
(the gradient of the soft term scales as 1/T^2).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..train import fit


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton's distillation loss; ``alpha`` weighs the soft term (``alpha=1`` or no targets: soft term only)."""
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)} (do they predict the same number of classes?)")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    T = temperature
    soft = F.kl_div(F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits / T, -1),
                    reduction="batchmean", log_target=True) * T**2  # T^2 * KL(p_t || p_s)
    if targets is None or alpha == 1:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, targets)


def kd_objective(teacher: nn.Module | None, temperature: float = 4.0, alpha: float = 0.9) -> Callable:
    """A ``loss_fn`` for :func:`lfm_ref.fit` that distils ``teacher`` (kept frozen, in eval mode).

    Batches are ``(x, y)``, and the teacher is run on every batch, or ``(x, y, teacher_logits)`` with the
    teacher's outputs computed once beforehand (offline distillation: ``lfm_ref.predict(teacher, x)``),
    which is exact when the inputs are not augmented and saves the teacher's forward pass at every step.
    """
    _check_temperature(temperature)
    if teacher is not None:
        teacher.eval().requires_grad_(False)

    def loss_fn(student, batch):
        if len(batch) == 3:
            x, y, teacher_logits = batch
        elif teacher is None:
            raise ValueError("kd_objective(None) needs (x, y, teacher_logits) batches")
        else:
            x, y = batch
            if next(teacher.parameters()).device != x.device:
                teacher.to(x.device)
            with torch.no_grad():
                teacher_logits = teacher(x)
        return kd_loss(student(x), teacher_logits, y, temperature, alpha)

    return loss_fn


def born_again(make_student: Callable[[], nn.Module], teacher: nn.Module, data, generations: int = 2,
               temperature: float = 4.0, alpha: float = 0.9, **fit_kwargs) -> list[nn.Module]:
    """Born-again networks: generation k+1 is distilled from generation k, starting from ``teacher``.

    Returns the students of every generation (the last one is usually used, or their ensemble).
    """
    if not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be a positive int, got {generations!r}")
    students, current = [], teacher
    for _ in range(generations):
        student = make_student()
        fit(student, data, loss_fn=kd_objective(current, temperature, alpha), **fit_kwargs)
        students.append(student)
        current = student
    return students
