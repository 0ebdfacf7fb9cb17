"""Data of the book, all generated or shipped: the fact world and the digits tasks.

Chapter: notebooks/00_foundation_models.ipynb.
"""
from .digits import DIGITS_TASKS, digits_images, digits_task
from .facts import CAPITALS, FILL_IN_CAPITAL, RELATIONS, TEMPLATES, Fact, FactWorld, capital_pairs

__all__ = ["CAPITALS", "FILL_IN_CAPITAL", "capital_pairs", "RELATIONS", "TEMPLATES", "Fact", "FactWorld",
           "DIGITS_TASKS", "digits_task", "digits_images"]
