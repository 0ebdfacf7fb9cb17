"""Every merge behind one call: ``merge(method, pretrained, finetuned, *, data=None, **hparams)``.

Chapter: notebooks/11_merging.ipynb (every merge of chapters 11 to 13 is called this way).

A registry of :class:`MergeMethod` objects (as mergekit's ``merge_methods.registry``): each has a
name, its paper, what it needs besides the weights and its hyper-parameters, one name per meaning
across methods:

- ``lam`` scales task vectors (task arithmetic, TIES, DARE, AdaMerging's starting point);
- ``density`` is the fraction of a task vector TIES keeps, ``p`` the fraction DARE drops;
- ``weights`` are averaging weights, ``off_diagonal`` RegMean's scale of the Gram matrices'
  off-diagonal entries (``alpha`` is kept for a position on a path between models: chapter 12).

``needs`` is ``("weights",)`` for merges of the weights alone, and names ``"inputs"`` (unlabeled
inputs, one tensor per fine-tuned model, passed as ``data``) and ``"models"`` (the fine-tuned models
themselves, to run them) for the others. Models can be passed wherever state dicts go: methods that
need only weights take their ``state_dict()``; methods that need no data ignore ``data``, so one
call fits every method (the arena chapter compares them all with it).

**Only the keys of ``pretrained`` are merged.** FusionBench's protocol gives every task its own frozen
head and merges the shared encoder: pass the encoder's state dict as ``pretrained`` and the task models
(each with its head) as ``finetuned``. Weight-only methods then merge the encoders; Fisher and RegMean
run each model with its own head on its own inputs; AdaMerging scores each task's entropy with that
task's model. The result holds ``pretrained``'s keys; load it under each task's head to evaluate.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .merging import dare_merge, fisher_merge, task_arithmetic, ties_merge, weighted_average
from .merging_with_data import adamerging, diagonal_fisher, regmean

__all__ = ["METHODS", "MergeMethod", "merge"]

NEEDS = ("weights", "inputs", "models")


@dataclass(frozen=True)
class MergeMethod:
    """One merge: ``run(pretrained, finetuned, data, **hparams)`` with the inputs ``needs`` names."""

    name: str
    paper: str
    needs: tuple[str, ...]
    hparams: tuple[str, ...]
    run: Callable
    summary: str

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown or "weights" in self.needs and len(self.needs) > 1:
            raise ValueError(f"needs must be ('weights',) or name some of {NEEDS[1:]}, got {self.needs}")

    def __repr__(self) -> str:
        return (f"MergeMethod({self.name!r}: {self.summary}; needs {', '.join(self.needs)}; "
                f"hyper-parameters {', '.join(self.hparams) or 'none'}; {self.paper})")


def _state(model_or_state: nn.Module | Mapping) -> Mapping:
    return model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state


def _restricted(model_or_state, keys) -> dict:
    """The entries of ``keys`` (``pretrained``'s) of a fine-tuned model or state dict."""
    state = _state(model_or_state)
    return {k: state[k] for k in keys}


def _fisher(pretrained, finetuned, data, eps=1e-8, batch_size=64):
    params = [k for k in pretrained if k in dict(finetuned[0].named_parameters())]
    fishers = [diagonal_fisher(m, x, batch_size, keys=params) for m, x in zip(finetuned, data)]
    return fisher_merge([_restricted(m, pretrained) for m in finetuned], fishers, eps=eps)


def _adamerging(pretrained, finetuned, data, **hparams):
    # each task's entropy with its own model: the merged keys replace the model's, its other
    # parameters (its own head) are used as they are; the models themselves are not changed
    merged, _ = adamerging(list(finetuned), pretrained, [_restricted(m, pretrained) for m in finetuned],
                           data, **hparams)
    return merged


METHODS: dict[str, MergeMethod] = {m.name: m for m in [
    MergeMethod("average", "Wortsman et al., 2022, ICML; arXiv:2203.05482 (soups); Izmailov et al., "
                "2018 (SWA); McMahan et al., 2017 (FedAvg)", ("weights",), ("weights",),
                lambda pre, fts, data, **hp: weighted_average(fts, **hp),
                "sum_t w_t theta_t / sum_t w_t (ignores pretrained)"),
    MergeMethod("task_arithmetic", "Ilharco et al., 2023, ICLR; arXiv:2212.04089", ("weights",),
                ("lam",), lambda pre, fts, data, **hp: task_arithmetic(pre, fts, **hp),
                "theta_0 + lam sum_t tau_t"),
    MergeMethod("ties", "Yadav et al., 2023, NeurIPS; arXiv:2306.01708", ("weights",),
                ("density", "lam", "scope", "rounding"),
                lambda pre, fts, data, **hp: ties_merge(pre, fts, **hp),
                "trim, elect sign, disjoint mean"),
    MergeMethod("dare", "Yu et al., 2024, ICML; arXiv:2311.03099", ("weights",), ("p", "lam", "seed"),
                lambda pre, fts, data, **hp: dare_merge(pre, fts, then="task_arithmetic", **hp),
                "drop and rescale, then task arithmetic"),
    MergeMethod("dare_ties", "Yu et al., 2024, ICML; arXiv:2311.03099", ("weights",),
                ("p", "lam", "density", "seed", "rounding"),
                lambda pre, fts, data, **hp: dare_merge(pre, fts, then="ties", **hp),
                "drop and rescale, then TIES per tensor"),
    MergeMethod("fisher", "Matena & Raffel, 2022, NeurIPS; arXiv:2111.09832", ("models", "inputs"),
                ("eps", "batch_size"), _fisher, "sum_t F_t theta_t / sum_t F_t, diagonal Fishers"),
    MergeMethod("regmean", "Jin et al., 2023, ICLR; arXiv:2212.09849", ("models", "inputs"),
                ("off_diagonal",), lambda pre, fts, data, **hp: regmean(fts, data, keys=pre, **hp),
                "least squares on every linear layer's inputs"),
    MergeMethod("adamerging", "Yang et al., 2024, ICLR; arXiv:2310.02575", ("models", "inputs"),
                ("steps", "lr", "lam", "batch_size", "seed"), _adamerging,
                "layer-wise lam learned by entropy minimisation"),
]}


def merge(method: str | MergeMethod, pretrained, finetuned: Sequence, *, data=None, **hparams
          ) -> dict[str, torch.Tensor]:
    """Merge ``finetuned`` (state dicts or models) that share the start ``pretrained`` with
    ``method``, e.g. ``merge("ties", theta_0, [theta_1, theta_2], density=0.2, lam=1.0)``.

    ``data``: unlabeled inputs, one tensor per fine-tuned model, for the methods that need them
    (``METHODS[name].needs``); the others ignore it. ``hparams`` must be among the method's
    ``hparams``. ``pretrained`` may be ``None`` for ``"average"``.

    Only ``pretrained``'s keys are merged (and returned): fine-tuned models or state dicts may hold
    more, such as each task's own head (FusionBench's protocol: merge the encoder, keep the heads).
    """
    if not isinstance(method, MergeMethod):
        if not isinstance(method, str) or method not in METHODS:
            close = difflib.get_close_matches(str(method), METHODS, n=1)
            raise ValueError(f"unknown merging method {method!r}"
                             + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" Known: {sorted(METHODS)}")
        method = METHODS[method]
    unknown = sorted(set(hparams) - set(method.hparams))
    if unknown:
        raise TypeError(f"{method.name} takes the hyper-parameters {list(method.hparams)}, "
                        f"got {unknown}")
    if isinstance(finetuned, (nn.Module, Mapping)) or not isinstance(finetuned, (list, tuple)):
        raise TypeError(f"finetuned must be a list of state dicts or models, got "
                        f"{type(finetuned).__name__}")
    if "inputs" in method.needs and data is None:
        raise ValueError(f"{method.name} needs data: unlabeled inputs, one tensor per fine-tuned "
                         f"model (data=[x_1, ..., x_T]); it merges by running the models on them")
    if "models" in method.needs:
        bad = [type(m).__name__ for m in finetuned if not isinstance(m, nn.Module)]
        if bad:
            raise TypeError(f"{method.name} needs the fine-tuned models (nn.Module), not state "
                            f"dicts: it runs them on the data; got {bad[0]}")
    if pretrained is None and method.name != "average":
        raise ValueError(f"method {method.name!r} needs the pretrained state dict (task vectors are "
                         f"relative to it)")
    pretrained = None if pretrained is None else _state(pretrained)
    if pretrained is not None:
        if not isinstance(pretrained, Mapping):
            raise TypeError(f"pretrained must be a state dict or a model, got {type(pretrained).__name__}")
        for i, m in enumerate(finetuned):
            missing = sorted(set(pretrained) - set(_state(m)))
            if missing:
                raise ValueError(f"finetuned[{i}] lacks keys of pretrained: {missing[:5]} (only "
                                 f"pretrained's keys are merged; are they the same architecture?)")
    if "models" not in method.needs:
        finetuned = [_state(m) if pretrained is None else _restricted(m, pretrained) for m in finetuned]
    return method.run(pretrained, finetuned, data, **hparams)
