"""What every weight-engineering method of Part I shares, in the pattern of PEFT's tuners: find the
target layers by name, wrap each in the method's layer, freeze everything else; later **merge** the
update into the base weight, **unmerge** it, or **unload** the wrappers. A method file (LoRA, (IA)^3,
adapters) defines only its layer and calls these.

One API for every layer method: :func:`wrapped_layers`, :func:`merge_layers`, :func:`unmerge_layers`
and :func:`unload_layers` take the method's layer class as ``kind`` (``LoraLinear``, ``IA3Layer``,
``AdapterLayer``, ``AdapterFusion``; by default every wrapped layer), so no method re-declares them.
Merging raises (where PEFT warns) when a layer is already merged or cannot be merged: stricter, so a
reader sees the mistake.

Chapters: notebooks/02a_lora.ipynb and notebooks/02b_adapters.ipynb.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .. import checks
from ..hooks import is_conv1d, set_module


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or of GPT-2's ``Conv1D`` (weight stored ``in x out``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"expected an nn.Linear or GPT-2's Conv1D, got {type(module).__name__}")


class WrappedLayer(nn.Module):
    """A frozen ``base`` layer plus a method's trainable parameters. Subclasses define ``forward`` and,
    when the update is linear in the weight (``mergeable = True``), ``_fold(inverse)``, which adds the
    update to the base weight or takes it out again; :meth:`merge` and :meth:`unmerge` keep the books."""

    mergeable = False

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.merged = False

    def merge(self) -> None:
        """Fold the update into the base weight: the layer then costs what the base layer costs."""
        self._set_merged(True)

    def unmerge(self) -> None:
        """Take the update out of the base weight again (the adapter is kept)."""
        self._set_merged(False)

    def _set_merged(self, merged: bool) -> None:
        if not self.mergeable:
            raise TypeError(f"{type(self).__name__} cannot be merged into its base layer: its update is not a "
                            "change of the base weight (unload it with merge=False, or keep it)")
        if self.merged == merged:
            raise ValueError(f"this {type(self).__name__} layer is {'already' if merged else 'not'} merged")
        with torch.no_grad():
            self._fold(inverse=not merged)
        self.merged = merged

    def _fold(self, inverse: bool) -> None:
        raise NotImplementedError


def check_targets(target_modules) -> list[str] | str:
    """A non-empty list of names (or name suffixes), or one regular expression (a string), as in PEFT."""
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regular expression: {err}") from err
        return target_modules
    if isinstance(target_modules, Mapping) or not isinstance(target_modules, Sequence):
        raise TypeError(f"target_modules must be a list of module names or a regular expression, "
                        f"got {type(target_modules).__name__} ({target_modules!r:.60})")
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
    checks.module(model)
    if not callable(wrap):
        raise TypeError(f"wrap must be a function (name, module) -> WrappedLayer, got {type(wrap).__name__}")
    targets = check_targets(target_modules)
    modules = [(n, m) for n, m in model.named_modules() if n]
    found = [(n, m) for n, m in modules if matches(n, targets)]
    wrong = [f"{n} ({type(m).__name__})" for n, m in found if not _is_linear(m)]
    if wrong:
        raise TypeError(f"target_modules must name nn.Linear or Conv1D layers; these are not: {wrong}")
    if isinstance(targets, str):
        missing = [] if found else [targets]
    else:
        missing = [t for t in targets if not any(matches(n, [t]) for n, _ in found)]
    if missing:
        names = sorted({n for n, _ in modules} | {n.rsplit(".", 1)[-1] for n, _ in modules})
        close = {t: difflib.get_close_matches(t, names, n=4, cutoff=0.5) for t in missing}
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules if _is_linear(m)})
        raise ValueError(f"no module of {type(model).__name__} matches {missing}; close names: {close}; "
                         f"its linear layers are named {linear}")
    if any(isinstance(m, WrappedLayer) for m in model.modules()):
        raise ValueError("the model is already adapted (it has wrapped layers): unload them first")
    model.requires_grad_(False)
    for name, module in found:
        set_module(model, name, wrap(name, module))
    return model


def wrapped_layers(model: nn.Module, kind: type = WrappedLayer) -> dict[str, WrappedLayer]:
    """The ``kind`` layers of ``model`` by name (every method's, by default); a ValueError if none."""
    checks.module(model)
    if not (isinstance(kind, type) and issubclass(kind, WrappedLayer)):
        raise TypeError(f"kind must be a WrappedLayer class such as LoraLinear, got {kind!r}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, kind)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no {kind.__name__} layers: inject them first")
    return layers


def _for_each(model: nn.Module, kind: type, action: str) -> nn.Module:
    for layer in wrapped_layers(model, kind).values():
        getattr(layer, action)()
    return model


def merge_layers(model: nn.Module, kind: type = WrappedLayer) -> nn.Module:
    """Fold every ``kind`` layer's update into its base weight (LoRA: ``W_0 <- W_0 + (alpha / r) B A``;
    (IA)^3: ``W <- diag(l) W``); the layers stay, marked merged, so :func:`unmerge_layers` can undo it."""
    return _for_each(model, kind, "merge")


def unmerge_layers(model: nn.Module, kind: type = WrappedLayer) -> nn.Module:
    """Undo :func:`merge_layers`: the base weights are the pretrained ones again."""
    return _for_each(model, kind, "unmerge")


def unload_layers(model: nn.Module, kind: type = WrappedLayer, merge: bool = True) -> nn.Module:
    """Put the base layers back: with the update merged in (``merge=True``, PEFT's ``merge_and_unload``)
    or dropped (``merge=False``, PEFT's ``unload``: the pretrained model again)."""
    for name, layer in wrapped_layers(model, kind).items():
        if merge != layer.merged:
            getattr(layer, "merge" if merge else "unmerge")()
        set_module(model, name, layer.base)
    return model


def trainable_state_dict(model: nn.Module) -> dict:
    """Only what training changed: the tensors of the parameters that require a gradient (an adapter file)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if k in names}
