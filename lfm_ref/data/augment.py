"""Distillation data with signal: on-the-fly augmentation of the digits, and a 100-class "digit pairs" task.

Teacher-free distillation (deep mutual learning, born-again networks) needs a peer whose predictions on
its *training* images are not the labels. Trained for hundreds of epochs on a few fixed images, a small
network returns near one-hot outputs there (chapter 7 measured a mean max-probability of 0.99), so its
"soft" targets carry nothing beyond the label. Two ingredients of the papers' CIFAR-100 setting restore
the signal:

* :func:`shift_and_noise`, fresh random shifts and pixel noise at every step (the 8x8 analogue of
  CIFAR's random crops): a peer never sees the same input twice and cannot memorise it;
* :func:`digit_pairs`, two digits side by side (8x16 images, 100 classes ``10 * left + right``): every
  class shares a digit with 18 others, the class similarity structure ("dark knowledge") that
  born-again networks (Furlanello et al., ICML 2018) distil on CIFAR-100 and that ten digit classes
  lack.

:func:`with_augmentation` applies a transform to the inputs of every batch inside a ``loss_fn`` for
:func:`lfm_ref.fit`, so that the objectives of :mod:`lfm_ref.distill` train on augmented inputs
unchanged (a teacher run inside the objective sees the same augmented view as the student: Beyer et
al.'s "consistent teaching").

Chapter: notebooks/07_classic_distillation.ipynb
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from .. import checks
from .digits import digits_task


def shift_and_noise(x: torch.Tensor, shift: int = 1, noise: float = 0.2,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of ``x`` (``(B, C, H, W)`` in [0, 1]) moved by its own random ``(dy, dx)`` in
    ``[-shift, shift]`` (the uncovered border is 0, nothing wraps around), plus Gaussian pixel noise of
    standard deviation ``noise``, clipped to [0, 1].

    Draws from ``generator`` (on the inputs' device) or, without one, from torch's global stream.
    ``x`` itself is not changed.
    """
    checks.tensor(x, "x", dim=4, floating=True)
    shift = checks.integer(shift, "shift", minimum=0)
    noise = checks.number(noise, "noise", low=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    b, c, h, w = x.shape
    if 2 * shift >= min(h, w):
        raise ValueError(f"shift must be smaller than half the image size ({h}x{w}), got {shift}")
    dev = x.device
    out = x
    if shift:
        padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))      # zeros around the image
        dy, dx = torch.randint(0, 2 * shift + 1, (2, b, 1), generator=generator, device=dev)
        rows = torch.arange(h, device=dev) + dy                                  # (B, H): row r -> r + dy
        cols = torch.arange(w, device=dev) + dx                                  # (B, W)
        out = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[:, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]              # (B, C, H, W)
    if noise:
        out = out + noise * torch.randn(out.shape, generator=generator, device=dev, dtype=out.dtype)
    return out.clamp(0.0, 1.0)


def with_augmentation(loss_fn: Callable | None, augment: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """A ``loss_fn(model, batch)`` for :func:`lfm_ref.fit` that first replaces the batch's inputs
    (its first element) by ``augment(inputs)``, then calls ``loss_fn`` (cross-entropy on ``(x, y)``
    when ``loss_fn`` is None). Everything after the inputs (labels, stored teacher logits) is passed on
    unchanged, so stored teacher logits would no longer match: run the teacher inside ``loss_fn``.
    """
    from ..train import default_loss

    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function loss_fn(model, batch) or None, got {type(loss_fn).__name__}")
    if not callable(augment):
        raise TypeError(f"augment must be a function of a batch of inputs, got {type(augment).__name__}")
    inner = loss_fn or default_loss

    def augmented_loss(model, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"with_augmentation expects (inputs, labels, ...) batches, got {type(batch).__name__}")
        if len(batch) > 2:
            raise ValueError("with_augmentation got (x, y, teacher_logits) batches: logits stored for the "
                             "unaugmented inputs do not describe the augmented ones; give (x, y) batches and "
                             "let the objective run its teacher")
        x, *rest = batch
        return inner(model, (augment(x), *rest))

    return augmented_loss


PAIR_CLASSES = 100


@lru_cache(maxsize=4)
def _pair_indices(split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = digits_task("digits", split)[1].numpy()
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 7])
    by_class = [np.flatnonzero(labels == k) for k in range(10)]
    classes = rng.integers(0, PAIR_CLASSES, n)                        # uniform over the 100 pair classes
    left = np.array([rng.choice(by_class[k // 10]) for k in classes])
    right = np.array([rng.choice(by_class[k % 10]) for k in classes])
    return left, right


def digit_pairs(split: str = "train", n: int = 10_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of two digits side by side, ``(n, 1, 8, 16)`` in [0, 1], and their labels
    ``10 * left digit + right digit`` (100 classes, drawn uniformly).

    Both digits of a pair come from the same split of the digits (the test pairs are made of test
    digits only), so no test digit is ever seen in training. ``seed`` fixes which pairs are drawn.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    n = checks.positive_int(n, "n")
    seed = checks.integer(seed, "seed", minimum=0)
    x, y = digits_task("digits", split)
    left, right = (torch.from_numpy(i) for i in _pair_indices(split, n, seed))
    images = torch.cat([x[left], x[right]], dim=-1)  # (n, 1, 8, 16): left digit | right digit
    return images, 10 * y[left] + y[right]
