"""What every weight-engineering method of Part I shares, in the pattern of PEFT's tuners: find the
target layers by name, wrap each in the method's layer, freeze everything else; later **merge** the
update into the base weight, **unmerge** it, or **unload** the wrappers. A method file (LoRA, (IA)^3,
adapters) defines only its layer and calls these.
"""
from __future__ import annotations

import difflib
import re
from typing import Callable, Sequence

from torch import nn

from ..hooks import is_conv1d, set_module


def linear_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or of GPT-2's ``Conv1D`` (weight stored ``in x out``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"expected an nn.Linear or GPT-2's Conv1D, got {type(module).__name__}")


class WrappedLayer(nn.Module):
    """A frozen ``base`` layer plus a method's trainable parameters. Subclasses define ``forward`` and,
    when the update is linear in the weight, ``merge``/``unmerge``."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.merged = False

    def merge(self) -> None:
        raise TypeError(f"{type(self).__name__} cannot be merged into its base layer: its update is not a "
                        "change of the base weight (unload it with merge=False, or keep it)")

    def unmerge(self) -> None:
        raise TypeError(f"{type(self).__name__} cannot be merged, so it cannot be unmerged")


def check_targets(target_modules) -> list[str] | str:
    """A non-empty list of names (or name suffixes), or one regular expression (a string), as in PEFT."""
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regular expression: {err}") from err
        return target_modules
    if not target_modules or not all(isinstance(t, str) for t in target_modules):
        raise ValueError(f"target_modules must be a non-empty list of module names or a regular expression, "
                         f"got {target_modules!r}")
    return list(target_modules)


def matches(name: str, targets: Sequence[str] | str) -> bool:
    """A list: ``name`` is a target or ends with ``"." + target`` (``"c_attn"`` matches every
    ``h.3.attn.c_attn``). A string: a regular expression that must match the whole name."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def inject(model: nn.Module, target_modules: Sequence[str] | str,
           wrap: Callable[[str, nn.Module], WrappedLayer]) -> nn.Module:
    """Freeze ``model`` and replace (in place) every module whose name matches ``target_modules`` by
    ``wrap(name, module)``. A target that matches nothing raises a ValueError listing close names."""
    targets = check_targets(target_modules)
    found = [(n, m) for n, m in model.named_modules() if n and matches(n, targets)]
    wrong = [f"{n} ({type(m).__name__})" for n, m in found if not (isinstance(m, nn.Linear) or is_conv1d(m))]
    if wrong:
        raise TypeError(f"target_modules must name nn.Linear or Conv1D layers; these are not: {wrong}")
    if isinstance(targets, str):
        missing = [] if found else [targets]
    else:
        missing = [t for t in targets if not any(matches(n, [t]) for n, _ in found)]
    if missing:
        names = {n for n, _ in model.named_modules() if n} | {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
        close = {t: difflib.get_close_matches(t, sorted(names), n=4, cutoff=0.5) for t in missing}
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)})
        raise ValueError(f"no module of {type(model).__name__} matches {missing}; close names: {close}; "
                         f"its linear layers are named {linear}")
    if any(isinstance(m, WrappedLayer) for m in model.modules()):
        raise ValueError("the model is already adapted (it has wrapped layers): unload them first")
    model.requires_grad_(False)
    for name, module in found:
        set_module(model, name, wrap(name, module))
    return model


def wrapped_layers(model: nn.Module, kind: type = WrappedLayer) -> dict[str, WrappedLayer]:
    """The ``kind`` layers of ``model`` by name; a ValueError if there are none."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, kind)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no {kind.__name__} layers: inject them first")
    return layers


def merge_layers(model: nn.Module, kind: type = WrappedLayer) -> nn.Module:
    for layer in wrapped_layers(model, kind).values():
        layer.merge()
    return model


def unmerge_layers(model: nn.Module, kind: type = WrappedLayer) -> nn.Module:
    for layer in wrapped_layers(model, kind).values():
        layer.unmerge()
    return model


def unload_layers(model: nn.Module, kind: type = WrappedLayer, merge: bool = True) -> nn.Module:
    """Put the base layers back: with the update merged in (``merge=True``) or dropped (``merge=False``)."""
    for name, layer in wrapped_layers(model, kind).items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        set_module(model, name, layer.base)
    return model


def trainable_state_dict(model: nn.Module) -> dict:
    """Only what training changed: the tensors of the parameters that require a gradient (an adapter file)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if k in names}
