"""Addressing a model's modules by name: finding and replacing them, and reading their activations.

Chapter: notebooks/02a_lora.ipynb (LoRA addresses layers by name; adapters, merging and editing too);
capturing inputs, patching outputs and the Conv1D-aware weight view serve Part V (model editing).
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from . import checks


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model``'s submodule called ``name`` (as in ``named_modules``), or a ValueError naming close ones."""
    checks.module(model)
    if not isinstance(name, str):
        raise TypeError(f"name must be a module name (a string), got {type(name).__name__} ({name!r:.60})")
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
        raise ValueError(f"{type(model).__name__} has no module {name!r}; close names: {close or 'none'} "
                         f"(see model.named_modules())")
    return modules[name]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace ``model``'s submodule called ``name`` by ``module`` (a ValueError naming close ones if it has none)."""
    get_module(model, name)
    checks.module(module, "module")
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` from transformers: a linear layer whose weight is stored transposed (``in x out``).
    Checked by name, so that nothing here imports transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


@contextmanager
def _capture(model: nn.Module, names: Sequence[str], what: str) -> Iterator[dict[str, torch.Tensor]]:
    """The one capturing loop behind :func:`capture_outputs` and :func:`capture_inputs`."""
    if isinstance(names, str):
        raise TypeError(f"names must be a list of module names, not a single string, got str ({names!r:.60})")
    stored: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            module = get_module(model, name)
            if what == "outputs":
                def hook(module, args, output, name=name):
                    stored[name] = output
                handles.append(module.register_forward_hook(hook))
            else:  # a pre-hook sees the positional inputs before the module runs
                def pre_hook(module, args, name=name):
                    stored[name] = args[0]
                handles.append(module.register_forward_pre_hook(pre_hook))
        yield stored
    finally:
        for h in handles:
            h.remove()


def capture_outputs(model: nn.Module, names: Sequence[str]):
    """Within the block, every forward pass stores the outputs of the named modules in the yielded dict.

    >>> with capture_outputs(cnn, ["features.2"]) as acts:
    ...     logits = cnn(x)
    >>> acts["features.2"].shape
    """
    return _capture(model, names, "outputs")


def capture_inputs(model: nn.Module, names: Sequence[str]):
    """Like :func:`capture_outputs`, for the first positional *input* of each named module: the keys
    ``k`` that ROME and MEMIT read at an MLP's output projection, or the hidden state GRACE compares
    with its codebook."""
    return _capture(model, names, "inputs")


@contextmanager
def patch_outputs(model: nn.Module, patches: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Within the block, the output of each named module goes through ``patches[name](output)`` and
    what that returns replaces it: for causal tracing (restore one hidden state from a clean run),
    for suppressing or amplifying neurons, for an editor that changes one layer's output.

    A module that returns a tuple (a Hugging Face block) passes the tuple; the function returns one.
    """
    if not isinstance(patches, dict) or not all(callable(f) for f in patches.values()):
        raise TypeError(f"patches must be a dict of module name -> function(output) -> output, "
                        f"got {type(patches).__name__}")
    handles = []
    try:
        for name, fn in patches.items():
            handles.append(get_module(model, name).register_forward_hook(
                lambda module, args, output, fn=fn: fn(output)))
        yield
    finally:
        for h in handles:
            h.remove()


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of an ``nn.Linear`` or of GPT-2's ``Conv1D`` as a ``(out_features, in_features)``
    matrix ``W`` with ``y = W x + b``: the weight itself for ``nn.Linear``, a transposed **view** for
    ``Conv1D`` (which stores ``in x out``). Writing into it writes the module's weight, so an editor
    states its update once, as the paper does, for both layer types."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.T  # Conv1D: y = x @ weight + bias, weight (in, out) -> view (out, in)
    raise TypeError(f"expected an nn.Linear or GPT-2's Conv1D, got {type(module).__name__}")
