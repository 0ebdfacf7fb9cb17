"""Data of the book, all generated or shipped: the fact world and the digits tasks.

Chapter: notebooks/00_foundation_models.ipynb.
"""
from .augment import PAIR_CLASSES, digit_pairs, shift_and_noise, with_augmentation
from .digits import (
                     BROAD_PRETRAINING,
                     COVERED_CLASSES,
                     DIGITS_TASKS,
                     MERGE_TASKS,
                     broad_pretraining_set,
                     digits_images,
                     digits_task,
                     merge_task,
                     rotate,
                     rotation_task,
                     similar_class_pairs,
                     subpopulation_task,
)
from .facts import (
                     CAPITALS,
                     FILL_IN_CAPITAL,
                     RELATIONS,
                     TEMPLATES,
                     EditRequest,
                     Fact,
                     FactWorld,
                     capital_pairs,
)
from .instructions import GRID_SIZE, instruction_pairs, instruction_templates
from .noisy_facts import noisy_corpus

__all__ = ["CAPITALS", "FILL_IN_CAPITAL", "capital_pairs", "RELATIONS", "TEMPLATES", "EditRequest", "Fact", "FactWorld",
           "DIGITS_TASKS", "digits_task", "digits_images", "BROAD_PRETRAINING", "COVERED_CLASSES", "MERGE_TASKS",
           "broad_pretraining_set", "merge_task", "rotate", "rotation_task", "similar_class_pairs",
           "subpopulation_task", "PAIR_CLASSES", "digit_pairs", "shift_and_noise", "with_augmentation",
           "GRID_SIZE", "instruction_pairs", "instruction_templates", "noisy_corpus"]
