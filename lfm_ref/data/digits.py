"""Downstream vision tasks made from scikit-learn's bundled 8x8 handwritten digits (no download).

``digits`` is the pretraining task of the zoo's vision models; the others apply a fixed transform
(rotation, mirroring, inversion, noise) or keep a class subset, so that several related "tasks" exist
for fine-tuning, merging and meta-learning. Every task uses the same stratified 80/20 split.

Chapter: notebooks/00_foundation_models.ipynb (the tasks are introduced there; Parts II-III use them).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .. import checks


def _rot90(x, rng):
    return np.rot90(x, 1, axes=(-2, -1))


def _flip(x, rng):
    return x[..., ::-1]


def _invert(x, rng):
    return 1.0 - x


def _noise(x, rng):
    return np.clip(x + rng.normal(0, 0.3, size=x.shape), 0, 1)


def _shift(x, rng):
    return np.roll(x, shift=(2, 2), axis=(-2, -1))


# name -> (transform of images, kept classes or None for all)
DIGITS_TASKS = {
    "digits": (None, None),
    "rot90": (_rot90, None),
    "flip": (_flip, None),
    "invert": (_invert, None),
    "noise": (_noise, None),
    "shift": (_shift, None),
    "low": (None, (0, 1, 2, 3, 4)),
    "high": (None, (5, 6, 7, 8, 9)),
}


@lru_cache(maxsize=1)
def _digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    idx_train, idx_test = train_test_split(np.arange(len(x)), test_size=0.2, random_state=0,
                                           stratify=digits.target)
    return x, digits.target.astype(np.int64), {"train": idx_train, "test": idx_test}


def digits_images(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The untransformed digits of a split, ``(images (N, 1, 8, 8) in [0, 1], labels)``."""
    return digits_task("digits", split)


def digits_task(name: str = "digits", split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the digits task ``name`` (see :data:`DIGITS_TASKS`) on ``split``.

    Labels are always the digit (0-9), also for class-subset tasks, so every task shares one head.
    ``seed`` fixes the randomness of random transforms (the noise task).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a digits task name (a string), got {type(name).__name__} ({name!r:.60})")
    seed = checks.integer(seed, "seed", minimum=0)
    if name not in DIGITS_TASKS:
        raise ValueError(f"unknown digits task {name!r}; known tasks: {sorted(DIGITS_TASKS)}")
    x, y, splits = _digits_split()
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    transform, classes = DIGITS_TASKS[name]
    idx = splits[split]
    x, y = x[idx], y[idx]
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
    if transform is not None:
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        x = transform(x, rng)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y)
