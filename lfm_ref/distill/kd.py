"""Response-based knowledge distillation (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a
Neural Network", arXiv:1503.02531) and its repeated form, born-again networks (Furlanello et al., ICML 2018).

Chapter: notebooks/07_classic_distillation.ipynb

The student matches the teacher's temperature-softened class distribution:

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T changes
(the gradient of the soft term scales as 1/T^2).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..train import fit
from ..utils import device_of, eval_mode


def _check_logits(student_logits, teacher_logits) -> None:
    """Both logits are float tensors of one shape ``(rows, classes)``; the error says which side differs."""
    checks.tensor(student_logits, "student_logits", floating=True)
    checks.tensor(teacher_logits, "teacher_logits", floating=True)
    s, t = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if s[:-1] != t[:-1]:
        raise ValueError(f"student_logits and teacher_logits must come from the same inputs, got shapes "
                         f"{s} and {t}")
    if s[-1] != t[-1]:
        raise ValueError(f"the student predicts {s[-1]} classes and the teacher {t[-1]}: distillation "
                         "needs the same number of classes")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            targets: torch.Tensor | None = None, temperature: float = 4.0,
            alpha: float = 0.9) -> torch.Tensor:
    """Hinton's distillation loss on ``(batch, classes)`` logits; ``alpha`` weighs the
    soft term (``alpha=1`` or no targets: the soft term only)."""
    _check_logits(student_logits, teacher_logits)
    T = checks.positive(temperature, "temperature")
    alpha = checks.probability(alpha, "alpha")
    log_p_s = F.log_softmax(student_logits / T, -1)  # log softmax(z_s / T)
    log_p_t = F.log_softmax(teacher_logits / T, -1)  # log softmax(z_t / T)
    soft = T**2 * F.kl_div(log_p_s, log_p_t, reduction="batchmean",
                           log_target=True)  # T^2 * KL(p_t || p_s)
    if targets is None or alpha == 1:
        return soft
    checks.class_indices(targets, "targets", student_logits.shape[-1])
    checks.same_shape(targets, student_logits[..., 0], "targets", "one label per row")
    hard = F.cross_entropy(student_logits, targets)                    # CE(z_s, y)
    return alpha * soft + (1 - alpha) * hard


def kd_objective(teacher: nn.Module | None, temperature: float = 4.0,
                 alpha: float = 0.9) -> Callable:
    """A ``loss_fn`` for :func:`lfm_ref.fit` that distils ``teacher`` (run in eval mode, no gradient).

    Batches are ``(x, y)``, and the teacher is run on every batch, or ``(x, y, teacher_logits)`` with the
    teacher's outputs computed once beforehand (offline distillation: ``lfm_ref.predict(teacher, x)``),
    which is exact when the inputs are not augmented and saves the teacher's forward pass at every step.
    The teacher keeps the train/eval mode it had between steps.
    """
    if teacher is not None:
        checks.module(teacher, "teacher")
    checks.positive(temperature, "temperature")
    checks.probability(alpha, "alpha")

    def loss_fn(student, batch):
        if len(batch) == 3:
            x, y, teacher_logits = batch
        elif teacher is None:
            raise ValueError("kd_objective(None) needs (x, y, teacher_logits) batches")
        else:
            x, y = batch
            if device_of(teacher) != x.device:
                teacher.to(x.device)
            with torch.no_grad(), eval_mode(teacher):
                teacher_logits = teacher(x)
        return kd_loss(student(x), teacher_logits, y, temperature, alpha)

    return loss_fn


def born_again(make_student: Callable[[], nn.Module], teacher: nn.Module, data, generations: int = 2,
               temperature: float = 4.0, alpha: float = 0.9, augment: Callable | None = None,
               **fit_kwargs) -> list[nn.Module]:
    """Born-again networks: generation k+1 is distilled from generation k, starting from ``teacher``.

    Returns the students of every generation (the last one is usually used, or their ensemble).
    ``augment`` (a function of a batch of inputs, e.g. :func:`lfm_ref.data.augment.shift_and_noise`)
    gives the student fresh augmented inputs at every step; the teacher is run on the same augmented
    view. When ``teacher`` is a :class:`~lfm_ref.distill.Cohort` of independent runs (one per seed)
    and ``make_student`` returns cohorts of the same size, member k of each generation is distilled
    from member k of the previous one, all in one ``fit``.
    """
    from ..data.augment import with_augmentation
    from .mutual import Cohort, independent_objective

    if not callable(make_student) or isinstance(make_student, nn.Module):
        raise TypeError(f"make_student must be a function that returns a new student, got "
                        f"{type(make_student).__name__}")
    checks.module(teacher, "teacher")
    generations = checks.positive_int(generations, "generations")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a function of a batch of inputs or None, got {type(augment).__name__}")
    if "loss_fn" in fit_kwargs:
        raise TypeError("born_again sets fit's loss_fn itself (KD from the previous generation)")

    def objective(current, student):
        if isinstance(current, Cohort):
            if not isinstance(student, Cohort) or len(student.peers) != len(current.peers):
                raise ValueError("a Cohort teacher needs make_student to return a Cohort of as many members")
            fns = [kd_objective(t, temperature, alpha) for t in current.peers]
            if augment is not None:  # every member draws its own view; its teacher sees that view
                fns = [with_augmentation(fn, augment) for fn in fns]
            return independent_objective(fns)
        fn = kd_objective(current, temperature, alpha)
        return fn if augment is None else with_augmentation(fn, augment)

    students, current = [], teacher
    for _ in range(generations):
        student = make_student()
        fit(student, data, loss_fn=objective(current, student), **fit_kwargs)
        students.append(student)
        current = student
    return students
