"""Part II, model distillation: moving what a teacher knows into a student.

Chapters: notebooks/07_classic_distillation.ipynb (``kd``, ``features``, ``mutual``),
notebooks/08a_data_free_inversion.ipynb and 08b_data_free_adversarial.ipynb (``data_free``; the
black-box API it distils from is :mod:`lfm_ref.blackbox`), notebooks/09_distilling_language_models.ipynb
(``lm_kd``).
"""
from .data_free import (
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
from .features import (
    Distillation,
    HintRegressor,
    fitnets_hint_objective,
    hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    rkd_objective,
)
from .kd import born_again, kd_loss, kd_objective
from .lm_kd import smaller_gpt2, teacher_corpus, token_kd_loss, token_kd_objective, with_teacher_logits
from .mutual import Cohort, independent_objective, mutual_learning_loss, mutual_learning_objective

__all__ = ["Distillation", "HintRegressor", "fitnets_hint_objective", "hint_loss", "rkd_angle_loss",
           "rkd_distance_loss", "rkd_loss", "rkd_objective", "born_again", "kd_loss", "kd_objective",
           "Cohort", "independent_objective", "mutual_learning_loss", "mutual_learning_objective",
           "BatchNormStatistics", "Generator", "bn_statistics_loss", "dafl", "dafl_losses",
           "deep_inversion", "dfad", "dfme", "discrepancy", "total_variation",
           "smaller_gpt2", "teacher_corpus", "token_kd_loss", "token_kd_objective", "with_teacher_logits"]
