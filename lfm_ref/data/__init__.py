"""Data of the book, all generated or shipped: the fact world and the digits tasks."""
from .facts import RELATIONS, TEMPLATES, Fact, FactWorld
from .digits import DIGITS_TASKS, digits_task, digits_images

__all__ = ["RELATIONS", "TEMPLATES", "Fact", "FactWorld", "DIGITS_TASKS", "digits_task", "digits_images"]
