"""Device, mode and seeding helpers shared by every chapter and method.

Two rules every library function keeps (and these helpers make easy): it leaves the caller's model in
the train/eval mode it found it (:func:`eval_mode`), and it never reseeds the global random streams (it
takes a ``seed`` or a ``torch.Generator`` instead; :func:`seed_everything` is for chapters only).
"""
from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def pin_threads(n: int = 1) -> int:
    """Run PyTorch on ``n`` CPU threads (chapters call it in their first cell) and return ``n``.

    Float sums are added up in an order that depends on the thread count, and a small model trained for
    a few hundred steps can end in a visibly different place. Every chapter pins one thread (how CI runs
    the notebooks), so the numbers printed in CI, in the built book and quoted in the prose are the same.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (a number of threads), got {n!r}")
    torch.set_num_threads(n)
    return n


def device(prefer: str | None = None) -> torch.device:
    """The device a chapter should run on: ``prefer`` if given, else CUDA, then Apple's MPS, then the CPU.

    The environment variable ``LFM_DEVICE`` overrides the automatic choice (``LFM_DEVICE=cpu`` pins a
    GPU machine to the CPU, e.g. to compare timings).
    """
    choice = prefer or os.environ.get("LFM_DEVICE")
    if choice is not None:
        if not isinstance(choice, str):
            raise TypeError(f"device name must be a string such as 'cpu' or 'cuda', got {type(choice).__name__}")
        dev = torch.device(choice)  # raises RuntimeError with torch's own message for nonsense names
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} was asked for, but torch.cuda.is_available() is False")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode inside the block and give each back the mode it had.

    ``model.eval()`` alone would leave a caller's training model with dropout off after a library call.
    Each submodule's own flag is restored, so a model that was partly frozen stays so.
    """
    from .checks import module

    saved = [[(m, m.training) for m in module(model).modules()] for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for flags in saved:
            for m, training in flags:
                m.training = training


@contextlib.contextmanager
def random_state_kept(seed: int | None = None) -> Iterator[None]:
    """Draws from the global random streams inside the block do not leak out: Python's, NumPy's and
    torch's (CPU, and CUDA where in use) states are restored after it. With ``seed``, torch's global
    streams start from ``seed`` inside the block, as after ``torch.manual_seed(seed)``.

    For library code that must draw from the global stream because what it calls takes no generator
    (Hugging Face's weight initialisation, ``generate``'s sampling, the zoo's recipes).
    """
    from .checks import integer

    seed = None if seed is None else integer(seed, "seed", minimum=0)
    python, numpy = random.getstate(), np.random.get_state()
    # every CUDA device is forked (initialising CUDA where there is one): a seed given to a device
    # not yet initialised would be queued and applied after the block, outside it
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) and return a ``torch.Generator`` seeded alike.

    For chapters and scripts: library functions take a ``seed`` or generator instead. The returned
    generator lets a caller draw random numbers that do not disturb the global stream.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must lie in [0, 2**32), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    return torch.Generator().manual_seed(seed)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
