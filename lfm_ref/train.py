"""The one training loop (`fit`) and the one evaluation helper (`evaluate`) of the book.

Chapter: notebooks/00_foundation_models.ipynb (the zoo's recipes train with it; every chapter uses it).

A method file supplies only what is special to it, usually a ``loss_fn(model, batch)``; everything
else (batching, device moves, the optimiser, the schedule, the progress bar) lives here.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import checks
from .utils import device as default_device
from .utils import device_of, eval_mode


class DictDataset(Dataset):
    """A dataset over a dict of equally long tensors; each item is a dict (Hugging Face style batches)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not tensors:
            raise ValueError("DictDataset needs at least one tensor, got an empty mapping")
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors must have the same length, got {lengths}")
        self.tensors = dict(tensors)
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


def to_device(batch, dev: torch.device):
    """Move a tensor, or a tuple/list/dict of tensors, to ``dev``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(dev, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, dev) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, dev) for v in batch)
    return batch


def default_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Cross-entropy for ``(x, y)`` batches; the model's own ``.loss`` for dict batches (Hugging Face)."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        if getattr(out, "loss", None) is None:
            raise ValueError("a dict batch needs a model that returns .loss (pass labels=...), or give loss_fn")
        return out.loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        return F.cross_entropy(model(x), y)
    raise TypeError(f"default_loss expects an (inputs, labels) pair or a dict batch, got {type(batch).__name__}; "
                    "pass loss_fn=... for other batches")


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    flag = os.environ.get("LFM_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "False")
    # Interactive terminals and Colab get a bar; executed books and CI logs stay clean.
    return sys.stderr.isatty() or "google.colab" in sys.modules


class TensorBatches:
    """Mini-batches sliced straight from in-memory tensors: one ``randperm`` per epoch, no per-item collate.

    Used for tuples of tensors, ``TensorDataset`` and :class:`DictDataset`, where a ``DataLoader``'s
    per-example indexing would cost more than a small model's whole training step.
    """

    def __init__(self, tensors, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
        self.tensors, self.batch_size, self.shuffle, self.generator = tensors, batch_size, shuffle, generator
        first = next(iter(tensors.values())) if isinstance(tensors, Mapping) else tensors[0]
        self.n = len(first)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if isinstance(self.tensors, Mapping):
                yield {k: v[idx] for k, v in self.tensors.items()}
            else:
                yield tuple(t[idx] for t in self.tensors)


def as_loader(data, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterable:
    """Accept a DataLoader, a Dataset, or a tuple of tensors, and return something iterable over batches."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data):
        if len({len(t) for t in data}) != 1:
            raise ValueError(f"the tensors of a data tuple must have the same length, got {[len(t) for t in data]}")
        data = TensorDataset(*data)
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a DataLoader, a Dataset or a tuple of tensors, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty: there is nothing to train or evaluate on")
    batch_size = checks.positive_int(batch_size, "batch_size")
    if isinstance(data, (TensorDataset, DictDataset)):
        return TensorBatches(data.tensors, batch_size, shuffle, generator)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


def fit(
    model: torch.nn.Module,
    data,
    *,
    loss_fn: Callable[[torch.nn.Module, object], torch.Tensor] | None = None,
    epochs: int = 1,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    params: Iterable[torch.nn.Parameter] | None = None,
    schedule: str = "cosine",
    warmup: int = 0,
    clip_grad: float | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    callback: Callable[[int, torch.nn.Module], None] | None = None,
    every: int = 0,
) -> list[float]:
    """Train ``model`` with AdamW and return the loss of every step.

    ``loss_fn(model, batch)`` returns a scalar; by default cross-entropy on ``(x, y)`` or the model's
    ``.loss`` on dict batches. ``params`` restricts training to some parameters (all trainable ones by
    default). ``steps`` overrides ``epochs`` with a step count; ``clip_grad`` clips the gradient norm.
    The schedule is ``"cosine"`` (decay to 0) or ``"constant"``, after ``warmup`` linear warm-up steps.
    ``callback(step, model)`` runs after every ``every``-th step (to record checkpoints or a learning
    curve); the model is put back in train mode after it. The model is left in eval mode.
    """
    checks.module(model)
    epochs = checks.positive_int(epochs, "epochs")
    steps = None if steps is None else checks.positive_int(steps, "steps")
    batch_size = checks.positive_int(batch_size, "batch_size")
    lr = checks.positive(lr, "lr")
    weight_decay = checks.number(weight_decay, "weight_decay", low=0.0)
    warmup = checks.integer(warmup, "warmup", minimum=0)
    every = checks.integer(every, "every", minimum=0)
    if callback is not None and every == 0:
        raise ValueError(f"every must be a positive int when a callback is given, got {every!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function loss_fn(model, batch) -> scalar tensor, "
                        f"got {type(loss_fn).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(step, model), got {type(callback).__name__}")
    schedule = checks.choice(schedule, "schedule", ("cosine", "constant"))
    if seed is not None:
        seed = checks.integer(seed, "seed", minimum=0)
    dev = torch.device(device) if device is not None else default_device()
    loss_fn = loss_fn or default_loss
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    loader = as_loader(data, batch_size, shuffle=True, generator=generator)

    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    model.to(dev).train()
    # the fused kernel does AdamW's whole update in one pass: twice as fast for small models on a CPU
    fused = dev.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    total = steps if steps is not None else epochs * len(loader)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))  # cosine to 0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=not _progress_enabled(progress), leave=False)
    losses: list[float] = []
    while len(losses) < total:
        for batch in loader:
            loss = loss_fn(model, to_device(batch, dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if callback is not None and len(losses) % every == 0:
                callback(len(losses), model)
                model.train()
            if len(losses) >= total:
                break
    bar.close()
    model.eval()
    return losses


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of rows whose arg-max equals the label (summed, so that `evaluate` can average over batches)."""
    return (logits.argmax(-1) == labels).sum()


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model``'s outputs on the inputs ``x``, in eval mode and batches, on the inputs' device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"predict expects a tensor of inputs, got {type(x).__name__}")
    batch_size = checks.positive_int(batch_size, "batch_size")
    dev = device_of(checks.module(model))
    with eval_mode(model):
        out = torch.cat([model(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])
    return out.to(x.device)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data,
    *,
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = accuracy,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> float:
    """Average ``metric`` of ``model`` over ``(x, y)`` data (accuracy by default), in eval mode.

    ``metric(outputs, labels)`` returns the *sum* over the batch; the result is divided by the number
    of examples, so any per-example metric (accuracy, squared error, log-likelihood) works. Integer
    labels next to ``(B, C)`` outputs are class indices and must lie in ``[0, C)``.
    """
    checks.module(model)
    if not callable(metric):
        raise TypeError(f"metric must be a function metric(outputs, labels), got {type(metric).__name__}")
    dev = torch.device(device) if device is not None else device_of(model)
    model.to(dev)
    total, n = 0.0, 0
    with eval_mode(model):
        for batch in as_loader(data, batch_size, shuffle=False):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError("evaluate expects (inputs, labels) batches")
            x, y = to_device(batch, dev)
            out = model(x)
            if out.dim() == 2 and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
                checks.class_indices(y, "labels", out.shape[1])  # the model has out.shape[1] classes
            total += float(metric(out, y))
            n += len(y)
    return total / n
