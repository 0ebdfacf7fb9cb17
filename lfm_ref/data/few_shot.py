"""Few-shot classes made from the 8x8 digits: each class is a (digit, transform) pair (no download).

Omniglot-style few-shot benchmarks need many classes with few examples each and classes held out for
meta-test. The book's digits have ten classes, so, as Santoro et al. and Vinyals et al. enlarged Omniglot
with rotated characters as new classes, a class here is a digit under one of eight transforms: the four
rotations by 0, 90, 180 and 270 degrees, each plain or inverted (``1 - x``). That gives 10 x 8 = 80
classes of about 180 images each (all 1797 images of scikit-learn's digits, both of the digits' splits:
held-out classes need no held-out images).

Meta-train and meta-test hold disjoint *digits*, not only disjoint classes: a meta-test class is a digit
the meta-learner never saw, under any transform. Digits 6 and 9 both go to meta-test, since a 6 turned by
180 degrees is a 9, and a held-out 9 would otherwise be a meta-train 6 in disguise. So meta-train has the
56 classes of digits 0, 1, 2, 4, 5, 7, 8 and meta-test the 24 classes of digits 3, 6, 9. Some classes of a
split look alike (a 0 and a 0 turned by 180 degrees), as some Omniglot characters do.

Chapter: notebooks/14_learning_to_learn.ipynb (and chapter 15).
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .digits import digits_task

# (quarter turns, inverted) of each transform; the class id of (digit d, transform t) is 10 * t + d
FEW_SHOT_TRANSFORMS = ((0, False), (1, False), (2, False), (3, False), (0, True), (1, True), (2, True), (3, True))
META_TEST_DIGITS = (3, 6, 9)
META_TRAIN_DIGITS = tuple(d for d in range(10) if d not in META_TEST_DIGITS)
SPLITS = ("meta-train", "meta-test")


@lru_cache(maxsize=1)
def _all_classes() -> tuple[torch.Tensor, torch.Tensor]:
    parts = [digits_task("digits", split) for split in ("train", "test")]
    x, digit = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    images, ids = [], []
    for t, (turns, inverted) in enumerate(FEW_SHOT_TRANSFORMS):
        z = torch.rot90(x, turns, dims=(-2, -1))
        images.append(1.0 - z if inverted else z)
        ids.append(10 * t + digit)
    return torch.cat(images).contiguous(), torch.cat(ids)


def few_shot_class_name(class_id: int) -> str:
    """``'7 rot90 inverted'``: the digit and transform behind a class id of :func:`few_shot_classes`."""
    if isinstance(class_id, torch.Tensor):
        class_id = int(class_id)
    if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < 80:
        raise ValueError(f"class_id must be an int in [0, 80), got {class_id!r}")
    turns, inverted = FEW_SHOT_TRANSFORMS[class_id // 10]
    return f"{class_id % 10} rot{90 * turns}" + (" inverted" if inverted else "")


def few_shot_classes(split: str = "meta-train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (n, 1, 8, 8) in [0, 1], class ids)`` of the few-shot classes of ``split``.

    ``split`` is ``"meta-train"`` (56 classes: digits 0, 1, 2, 4, 5, 7, 8 under 8 transforms) or
    ``"meta-test"`` (24 classes: digits 3, 6, 9); the two share no class and no digit. A class id is
    ``10 * transform + digit`` (see :data:`FEW_SHOT_TRANSFORMS`, :func:`few_shot_class_name`); an episode
    sampler relabels the classes it draws 0..N-1. The images are fixed (no randomness).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    x, ids = _all_classes()
    digits = META_TRAIN_DIGITS if split == "meta-train" else META_TEST_DIGITS
    keep = torch.isin(ids % 10, torch.tensor(digits))
    return x[keep], ids[keep]
