"""Reading a model's intermediate activations by module name (for feature- and relation-based methods)."""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model``'s submodule called ``name`` (as in ``named_modules``), or a ValueError naming close ones."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
        raise ValueError(f"{type(model).__name__} has no module {name!r}; close names: {close or 'none'} "
                         f"(see model.named_modules())")
    return modules[name]


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass stores the outputs of the named modules in the yielded dict.

    >>> with capture_outputs(cnn, ["features.2"]) as acts:
    ...     logits = cnn(x)
    >>> acts["features.2"].shape
    """
    if isinstance(names, str):
        raise TypeError("names must be a list of module names, not a single string")
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            def hook(module, inputs, output, name=name):
                outputs[name] = output
            handles.append(get_module(model, name).register_forward_hook(hook))
        yield outputs
    finally:
        for h in handles:
            h.remove()
