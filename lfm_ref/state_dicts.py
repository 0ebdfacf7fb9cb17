"""State dicts as the common currency of weight-space methods (Parts I, III and V).

A state dict (``model.state_dict()``) maps parameter and buffer names to tensors. Fine-tuning, merging,
mode connectivity and model editing all read and write them, so the helpers they share live here and
not in any one family:

- :func:`check_state_dicts`: equal keys, shapes and devices, with an error that names the first mismatch;
- :func:`is_weight`: floating-point entries are weights; integer buffers (BatchNorm's
  ``num_batches_tracked``) are copied, never averaged;
- :func:`task_vector`: ``tau = theta_ft - theta_0`` (Ilharco et al., 2023; arXiv:2212.04089);
- :func:`interpolate`: ``(1 - alpha) theta_A + alpha theta_B``, the one line behind WiSE-FT (chapter 1)
  and linear mode connectivity (chapter 12);
- :func:`snapshot`: a detached copy of a model's weights, e.g. a checkpoint for SWA (chapter 11b).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import checks

StateDict = Mapping[str, torch.Tensor]


def check_state_dicts(state_dicts: Sequence[StateDict], what: str = "state dicts") -> list[StateDict]:
    """``state_dicts`` as a list, or a clear error unless it is a non-empty list of dicts with equal keys,
    shapes and devices."""
    if isinstance(state_dicts, Mapping) or not isinstance(state_dicts, (list, tuple)):
        raise TypeError(f"{what} must be a list of state dicts (model.state_dict()), "
                        f"got {type(state_dicts).__name__}")
    if len(state_dicts) == 0:
        raise ValueError(f"{what} is empty: there is nothing to merge")
    for i, sd in enumerate(state_dicts):
        if not isinstance(sd, Mapping):
            raise TypeError(f"{what}[{i}] must be a state dict (model.state_dict()), got "
                            f"{type(sd).__name__}; pass model.state_dict() rather than the model")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        if sd.keys() != first.keys():
            missing, extra = sorted(set(first) - set(sd)), sorted(set(sd) - set(first))
            raise ValueError(f"{what}[{i}] has different keys from {what}[0]: missing {missing[:5]}, "
                             f"unexpected {extra[:5]} (are they the same architecture?)")
        for key, value in sd.items():
            if value.shape != first[key].shape:
                raise ValueError(f"{what}[{i}][{key!r}] has shape {tuple(value.shape)} but {what}[0] has "
                                 f"{tuple(first[key].shape)}")
            if value.device != first[key].device:
                raise ValueError(f"{what}[{i}][{key!r}] is on {value.device} but {what}[0] is on "
                                 f"{first[key].device}; move every model to one device first")
    return list(state_dicts)


def is_weight(t: torch.Tensor) -> bool:
    """Floating-point entries are weights; integer buffers are bookkeeping and are copied unchanged."""
    return t.is_floating_point()


def task_vector(pretrained: StateDict, finetuned: StateDict) -> dict[str, torch.Tensor]:
    """``tau = theta_ft - theta_0`` for every floating-point entry."""
    check_state_dicts([pretrained, finetuned], "[pretrained, finetuned]")
    return {k: finetuned[k] - pretrained[k] for k in pretrained if is_weight(pretrained[k])}


def interpolate(a: StateDict, b: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) theta_A + alpha theta_B``; integer buffers come from ``a``.

    ``alpha`` outside ``[0, 1]`` extrapolates (chapter 12 walks past both ends of the path)."""
    alpha = checks.number(alpha, "alpha")
    check_state_dicts([a, b], "[a, b]")
    return {k: torch.lerp(v, b[k], alpha) if is_weight(v) else v.clone() for k, v in a.items()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state dict: later training does not change it."""
    checks.module(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
