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


def _rot180(x, rng):
    return np.rot90(x, 2, axes=(-2, -1))


def _vflip(x, rng):
    return x[..., ::-1, :]


def _transpose(x, rng):
    return np.swapaxes(x, -2, -1)


def _nudge(x, rng):
    return np.roll(x, shift=(1, 1), axis=(-2, -1))


def _nudge_back(x, rng):
    return np.roll(x, shift=(-1, -1), axis=(-2, -1))


# name -> (transform of images, kept classes or None for all)
DIGITS_TASKS = {
    "digits": (None, None),
    "rot90": (_rot90, None),
    "flip": (_flip, None),
    "invert": (_invert, None),
    "noise": (_noise, None),
    "shift": (_shift, None),
    "rot180": (_rot180, None),
    "vflip": (_vflip, None),
    "transpose": (_transpose, None),
    "nudge": (_nudge, None),
    "nudge_back": (_nudge_back, None),
    "low": (None, (0, 1, 2, 3, 4)),
    "high": (None, (5, 6, 7, 8, 9)),
}

# The broad foundation's pretraining family (zoo model ``tiny-vit``): the digits under transforms that
# leave them readable, all ten classes each, and the four merge tasks' transforms for digits 0-4 only.
# So the downstream merge tasks are partly covered, as CLIP's pretraining covers part of FusionBench's
# tasks: zero-shot transfer is partial and the model's confidence says where it is right.
BROAD_PRETRAINING = ("digits", "rot180", "vflip", "transpose", "nudge", "nudge_back", "noise")
COVERED_CLASSES = (0, 1, 2, 3, 4)

# The merging chapters' tasks (FusionBench's protocol): each a transform with its own label space. A
# task's head is the foundation's head restricted to its classes and stays frozen, so fine-tuning and
# merging change the shared encoder only. Labels of :func:`merge_task` index the task's classes.
MERGE_TASKS = {
    "rot90": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    "flip": (0, 2, 4, 6, 8),
    "invert": (1, 3, 5, 7, 9),
    "shift": (3, 4, 5, 6, 7, 8, 9),
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


def broad_pretraining_set(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The images of the broad foundation's pretraining (see :data:`BROAD_PRETRAINING`): every digit
    under each transform of the family, plus the merge tasks' transforms of digits 0-4
    (:data:`COVERED_CLASSES`). Labels are the digits."""
    # seed 1: the pretraining's noise is a different draw from the downstream noise task's (seed 0)
    parts = [digits_task(name, split, seed=1) for name in BROAD_PRETRAINING]
    for name in MERGE_TASKS:
        x, y = digits_task(name, split)
        keep = torch.isin(y, torch.tensor(COVERED_CLASSES))
        parts.append((x[keep], y[keep]))
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def merge_task(name: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of merge task ``name`` (a key of :data:`MERGE_TASKS`): its transform of the
    digits of its classes, labels ``0..k-1`` in the order of ``MERGE_TASKS[name]`` (its own label space)."""
    if not isinstance(name, str) or name not in MERGE_TASKS:
        raise ValueError(f"name must be a merge task, one of {sorted(MERGE_TASKS)}, got {name!r:.60}")
    x, y = digits_task(name, split)
    classes = torch.tensor(MERGE_TASKS[name])
    keep = torch.isin(y, classes)
    return x[keep], torch.searchsorted(classes, y[keep])


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Images ``(N, 1, H, W)`` rotated by ``angle`` degrees about their centre (bilinear, no reshaping,
    clipped to [0, 1])."""
    from scipy.ndimage import rotate as nd_rotate

    x = checks.tensor(x, "x", dim=4, floating=True)
    angle = checks.number(angle, "angle")
    out = nd_rotate(x.numpy(), angle, axes=(-1, -2), reshape=False, order=1, mode="constant")
    return torch.from_numpy(np.clip(out, 0, 1).astype(np.float32))


def rotation_task(angles, split: str = "train",
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits rotated by ``angles`` degrees: one angle, or a sequence of them (a
    *mixture* domain: each image gets one of the angles, in equal shares, in a seeded
    order). A family of related domains for AdapterSoup (chapter 11c): rotations by
    nearby angles need compatible changes of the model."""
    many = isinstance(angles, (tuple, list))
    angles = [checks.number(a, "angle") for a in (angles if many else [angles])]
    if not angles:
        raise ValueError("angles must be an angle or a non-empty sequence of angles, "
                         "got an empty sequence")
    x, y = digits_task("digits", split)
    which = torch.arange(len(x)) % len(angles)  # equal shares ...
    order = torch.Generator().manual_seed(checks.integer(seed, "seed", 0))
    which = which[torch.randperm(len(x), generator=order)]  # ... in a seeded order
    out = x.clone()
    for i, angle in enumerate(angles):
        out[which == i] = rotate(x[which == i], angle)
    return out, y


def similar_class_pairs(features: torch.Tensor,
                        labels: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Pairs of classes whose mean features are most alike (cosine), matched greedily:
    the superclasses of a BREEDS-style sub-population shift (Santurkar et al., 2021)
    built from a model's own view."""
    features = checks.tensor(features, "features", dim=2, floating=True)
    labels = checks.tensor(labels, "labels", dim=1, floating=False)
    classes = sorted(labels.unique().tolist())
    if len(classes) % 2:
        raise ValueError(f"labels must hold an even number of classes to pair, "
                         f"got {len(classes)}")
    means = torch.stack([features[labels == c].mean(0) for c in classes])
    means = torch.nn.functional.normalize(means, dim=1)
    sim = means @ means.T  # (C, C) cosines
    sim.fill_diagonal_(-float("inf"))
    pairs, left = [], set(range(len(classes)))
    for flat in torch.argsort(sim.flatten(), descending=True).tolist():
        i, j = divmod(flat, len(classes))
        if i in left and j in left:
            pairs.append((classes[min(i, j)], classes[max(i, j)]))
            left -= {i, j}
    return tuple(sorted(pairs))


def subpopulation_task(pairs, part: str = "id",
                       split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """A sub-population shift (BREEDS): superclass ``k`` is the pair ``pairs[k]`` of
    digits; the in-distribution part ``"id"`` holds the first digit of every pair,
    ``"ood"`` the second. Labels are superclass indices, so a model that learns the
    superclass from one member must transfer to the other."""
    part = checks.choice(part, "part", ("id", "ood"))
    if not isinstance(pairs, (tuple, list)) or not pairs or not all(
            isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        raise TypeError(f"pairs must be a sequence of (digit, digit) pairs, "
                        f"got {pairs!r:.80}")
    members = [p[0 if part == "id" else 1] for p in pairs]
    x, y = digits_task("digits", split)
    keep = torch.isin(y, torch.tensor(members))
    lookup = {digit: k for k, digit in enumerate(members)}
    return x[keep], torch.tensor([lookup[int(d)] for d in y[keep]])
