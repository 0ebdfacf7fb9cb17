"""Data of the book, all generated or shipped: the fact world and the digits tasks.

Chapter: notebooks/00_foundation_models.ipynb.
"""
from .digits import DIGITS_TASKS, digits_images, digits_task
from .facts import RELATIONS, TEMPLATES, Fact, FactWorld

__all__ = ["RELATIONS", "TEMPLATES", "Fact", "FactWorld", "DIGITS_TASKS", "digits_task", "digits_images"]
