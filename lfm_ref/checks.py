"""Input checks shared by every family: one message style for "expected X, got Y".

Each check returns the value it accepted (converted where that is lossless: an int for an int, a float
for a number, a list for a sequence of texts), so a method reads ``r = positive_int(r, "r")`` once at
the top and then trusts ``r``. The messages name the argument, what was expected and what came, so a
reader who passes ``alpha="16"`` learns that ``alpha`` must be a number and got the string ``'16'``.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def _got(value) -> str:
    """``str ('16')``: the type and a short repr of a rejected value."""
    text = repr(value)
    return f"{type(value).__name__} ({text if len(text) <= 60 else text[:57] + '...'})"


def integer(value, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (``bool`` is not one), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_got(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def positive_int(value, name: str) -> int:
    """An ``int`` >= 1: a rank, a number of steps, a batch size."""
    return integer(value, name, minimum=1)


def number(value, name: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a ``float`` within ``[low, high]`` (an end is excluded when ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (int or float), got {_got(value)}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must be a number, got nan")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{name} must lie in {span}, got {value}")
    return value


def positive(value, name: str) -> float:
    """A number > 0: a temperature, a learning rate, a scale."""
    return number(value, name, low=0.0, low_open=True)


def probability(value, name: str, high_open: bool = False) -> float:
    """A number in ``[0, 1]`` (``[0, 1)`` with ``high_open``: a drop rate that must leave something)."""
    return number(value, name, low=0.0, high=1.0, high_open=high_open)


def choice(value, name: str, options: Sequence[str]) -> str:
    """One of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def tensor(value, name: str, dim: int | Sequence[int] | None = None, floating: bool | None = None) -> torch.Tensor:
    """A ``torch.Tensor`` with ``dim`` dimensions (one of them, for a sequence), floating or integer."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_got(value)}")
    dims = (dim,) if isinstance(dim, int) else dim
    if dims is not None and value.dim() not in dims:
        want = " or ".join(str(d) for d in dims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(value.shape)}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got dtype {value.dtype}")
    return value


def same_shape(value: torch.Tensor, like: torch.Tensor, name: str, like_name: str) -> torch.Tensor:
    """``value`` with exactly ``like``'s shape (no broadcasting: a broadcastable wrong shape is an error)."""
    tensor(value, name)
    if value.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name}, {tuple(like.shape)}, "
                         f"got {tuple(value.shape)}")
    return value


def class_indices(labels, name: str, num_classes: int) -> torch.Tensor:
    """An integer tensor of class indices in ``[0, num_classes)``."""
    tensor(labels, name, floating=False)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must hold class indices in [0, {num_classes}), got values from "
                         f"{labels.min().item()} to {labels.max().item()}")
    return labels


def texts(value, name: str = "texts") -> list[str]:
    """A non-empty list of strings (a single string is refused: it would be read as characters)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(t, str) for t in value):
        raise TypeError(f"{name} must be a list of strings, got {_got(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} is empty")
    return list(value)


def module(value, name: str = "model") -> nn.Module:
    """A ``torch.nn.Module``; a state dict in its place gets a hint."""
    if not isinstance(value, nn.Module):
        hint = "; pass the model, not its state_dict()" if isinstance(value, Mapping) else ""
        raise TypeError(f"{name} must be a torch.nn.Module, got {_got(value)}{hint}")
    return value


def non_empty(value, name: str) -> list:
    """A non-empty list or tuple."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list, got {_got(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} is empty")
    return list(value)


def int_between(value, name: str, low: int, high: int, high_name: str | None = None) -> int:
    """An ``int`` in ``[low, high]``; ``high_name`` says what ``high`` counts (``"the number of blocks"``)."""
    value = integer(value, name)
    if not low <= value <= high:
        upper = f"{high_name} ({high})" if high_name else str(high)
        raise ValueError(f"{name} must be an int between {low} and {upper}, got {value}")
    return value
