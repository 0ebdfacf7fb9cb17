"""Part II, model distillation: moving what a teacher knows into a student."""
from .features import (Distillation, HintRegressor, fitnets_hint_objective, hint_loss, rkd_angle_loss,
                       rkd_distance_loss, rkd_loss, rkd_objective)
from .kd import born_again, kd_loss, kd_objective
from .mutual import Cohort, mutual_learning_loss, mutual_learning_objective

__all__ = ["Distillation", "HintRegressor", "fitnets_hint_objective", "hint_loss", "rkd_angle_loss",
           "rkd_distance_loss", "rkd_loss", "rkd_objective", "born_again", "kd_loss", "kd_objective",
           "Cohort", "mutual_learning_loss", "mutual_learning_objective"]
