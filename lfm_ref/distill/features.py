"""Feature- and relation-based distillation.

FitNets (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets"): a regressor r maps the
student's guided layer v(x) onto the teacher's hint layer u(x),

    L_HT = 1/2 || u(x) - r(v(x)) ||^2 ,

first trained alone (stage 1), then the whole student is distilled with KD (stage 2).

Relational KD (Park et al., CVPR 2019, "Relational Knowledge Distillation"): the student matches the
*relations* between embeddings of a batch rather than the embeddings themselves,

    L_D = sum_{i,j} huber( psi_D(s_i, s_j), psi_D(t_i, t_j) ),  psi_D(a, b) = ||a - b|| / mu
    L_A = sum_{i,j,k} huber( psi_A(s_i, s_j, s_k), psi_A(t_i, t_j, t_k) ),  psi_A = cos of the angle at j

with mu the mean pairwise distance of the batch; both are invariant to rotating and scaling the
embedding space, so student and teacher may have different widths.

Chapter: notebooks/07_classic_distillation.ipynb
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..hooks import capture_outputs


class HintRegressor(nn.Module):
    """r(.): a 1x1 convolution for feature maps, a linear map for vectors (from student to teacher width)."""

    def __init__(self, student_dim: int, teacher_dim: int, conv: bool = False):
        super().__init__()
        student_dim = checks.positive_int(student_dim, "student_dim")
        teacher_dim = checks.positive_int(teacher_dim, "teacher_dim")
        self.map = nn.Conv2d(student_dim, teacher_dim, 1) if conv else nn.Linear(student_dim, teacher_dim)

    def forward(self, v):
        return self.map(v)


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, regressor: nn.Module) -> torch.Tensor:
    """FitNets' L_HT with the squared norm averaged over elements: ``0.5 * mse`` (torchdistill uses ``mse``)."""
    checks.tensor(student_features, "student_features", floating=True)
    checks.tensor(teacher_features, "teacher_features", floating=True)
    checks.module(regressor, "regressor")
    r = regressor(student_features)
    if r.shape != teacher_features.shape:
        raise ValueError(f"the regressed student features have shape {tuple(r.shape)} but the teacher's hint "
                         f"has {tuple(teacher_features.shape)}; size the HintRegressor to match")
    return 0.5 * F.mse_loss(r, teacher_features)  # 1/2 ||u - r(v)||^2


class Distillation(nn.Module):
    """A student, a frozen teacher and any extra trainable parts (a regressor) as one module for `fit`.

    The teacher stays in eval mode (its BatchNorm statistics are never updated) and out of the optimiser.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, **extra: nn.Module):
        super().__init__()
        checks.module(student, "student")
        checks.module(teacher, "teacher")
        # the teacher becomes part of this module: frozen and in eval mode for as long as it is inside
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.extra = nn.ModuleDict(extra)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self


def _check_layer_names(student_layer, teacher_layer) -> None:
    for name, value in (("student_layer", student_layer), ("teacher_layer", teacher_layer)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a module name (a str such as 'body'), got "
                            f"{type(value).__name__} ({value!r:.40})")


def paired_features(d: Distillation, x: torch.Tensor, student_layer: str, teacher_layer: str):
    """``(student features, teacher features, student logits)`` of the named layers on one batch."""
    if not isinstance(d, Distillation):
        raise TypeError(f"feature distillation trains a Distillation(student, teacher, ...) module, got "
                        f"{type(d).__name__}")
    with capture_outputs(d.teacher, [teacher_layer]) as t_out, torch.no_grad():
        d.teacher(x)
    with capture_outputs(d.student, [student_layer]) as s_out:
        logits = d.student(x)
    return s_out[student_layer], t_out[teacher_layer], logits


def fitnets_hint_objective(student_layer: str, teacher_layer: str):
    """Stage 1 of FitNets as a ``loss_fn`` for ``fit(Distillation(student, teacher, regressor=...), ...)``."""
    _check_layer_names(student_layer, teacher_layer)

    def loss_fn(d: Distillation, batch):
        if "regressor" not in getattr(d, "extra", {}):
            raise ValueError("FitNets' hint stage trains Distillation(student, teacher, regressor=HintRegressor(...))"
                             ": no regressor was given")
        student, teacher, _ = paired_features(d, batch[0], student_layer, teacher_layer)
        return hint_loss(student, teacher, d.extra["regressor"])

    return loss_fn


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    return torch.cdist(e, e)  # ||e_i - e_j||


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-D: Huber loss between distance matrices, each normalised by its mean off-diagonal distance."""
    _check_embeddings(student, teacher)
    s, t = _pairwise_distances(student.flatten(1)), _pairwise_distances(teacher.flatten(1)).detach()
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return F.smooth_l1_loss(s / s[off].mean(), t / t[off].mean())  # psi_D = ||a - b|| / mu


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-A: Huber loss between the cosines of all angles (e_i - e_j, e_k - e_j) of a batch."""
    _check_embeddings(student, teacher)

    def angles(e):
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # diff[j, i] = unit(e_i - e_j)
        return torch.bmm(diff, diff.transpose(1, 2))  # [j, i, k] = cos angle_ijk

    return F.smooth_l1_loss(angles(student.flatten(1)), angles(teacher.flatten(1)).detach())


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """The paper's combination, lambda_D * L_D + lambda_A * L_A (its weights: 25 and 50)."""
    distance_weight = checks.number(distance_weight, "distance_weight", low=0)
    angle_weight = checks.number(angle_weight, "angle_weight", low=0)
    return (distance_weight * rkd_distance_loss(student, teacher)      # lambda_D * L_D
            + angle_weight * rkd_angle_loss(student, teacher))         # + lambda_A * L_A


def _check_embeddings(student, teacher):
    checks.tensor(student, "student", floating=True)
    checks.tensor(teacher, "teacher", floating=True)
    if student.dim() < 2 or teacher.dim() < 2:
        raise ValueError(f"embeddings must be (batch, features...), got shapes {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student and teacher embeddings must come from the same batch, got {student.shape[0]} "
                         f"and {teacher.shape[0]} rows")
    if student.shape[0] < 3:
        raise ValueError(f"relational losses need a batch of at least 3 examples, got {student.shape[0]}")


def rkd_objective(student_layer: str, teacher_layer: str, distance_weight: float = 25.0, angle_weight: float = 50.0):
    """Cross-entropy plus RKD on the named layers' outputs, a ``loss_fn`` for ``fit(Distillation(...))``."""
    _check_layer_names(student_layer, teacher_layer)
    checks.number(distance_weight, "distance_weight", low=0)
    checks.number(angle_weight, "angle_weight", low=0)

    def loss_fn(d: Distillation, batch):
        x, y = batch
        student, teacher, logits = paired_features(d, x, student_layer, teacher_layer)
        return F.cross_entropy(logits, y) + rkd_loss(student, teacher, distance_weight,
                                                     angle_weight)  # CE + lambda_D L_D + lambda_A L_A

    return loss_fn
