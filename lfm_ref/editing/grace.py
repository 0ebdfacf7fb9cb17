"""GRACE: lifelong editing with a discrete key-value codebook at one layer.

Hartvigsen et al., 2023, *Aging with GRACE: lifelong model editing with discrete key-value adaptors*
(NeurIPS). One chosen linear layer ``f`` is wrapped by an adaptor holding a codebook of keys ``k_i``
(the layer's input at the last token of an edit prompt), values ``v_i`` (a replacement for the
layer's output) and deferral radii ``eps_i``. For every position's input ``h``,

    i* = argmin_i ||h - k_i||,    out = v_{i*}  if ||h - k_{i*}|| <= eps_{i*},  else f(h)      (GRACE, eq. 1)

so an input outside every radius goes through the layer untouched. A new edit adds an entry whose
value is trained (the rest of the model frozen) until the model gives the new object; when its key
falls inside an existing entry with the same object the radius grows to cover it, and when the
object differs both radii shrink to half their distance (the paper's expand and split rules).

Chapter: notebooks/16_editing_memory.ipynb (Part V; the chapter is still being written).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import checks
from ..hooks import capture_inputs, get_module, is_conv1d
from ..lm import encode, target_ids
from ..tuning.inject import WrappedLayer, linear_features
from ..utils import device_of, eval_mode
from .base import Edit, EditRequest, ModelSnapshot, check_requests


class GraceLayer(WrappedLayer):
    """A frozen linear layer behind a codebook: keys ``(n, d_in)``, values ``(n, d_out)``, radii ``(n,)``
    and, per entry, the object id it was made for (for the expand and split rules)."""

    def __init__(self, base: nn.Module):
        super().__init__(base)
        d_in, d_out = linear_features(base)
        like = base.weight
        self.register_buffer("keys", like.new_zeros(0, d_in))
        self.register_buffer("radii", like.new_zeros(0))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long, device=like.device))
        self.values = nn.ParameterList()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.base(h)
        if len(self.keys) == 0:
            return out
        # ||h - k_i||, (B*T, n)
        dist = torch.cdist(h.reshape(-1, h.shape[-1]), self.keys)
        nearest, idx = dist.min(-1)            # i* per position
        hit = nearest <= self.radii[idx]       # inside eps_{i*}: use v_{i*}
        if not hit.any():
            return out                         # bit-equal outside every radius
        values = torch.stack(list(self.values))  # (n, d_out)
        flat = out.reshape(-1, out.shape[-1])
        flat = torch.where(hit[:, None], values[idx], flat)
        return flat.reshape(out.shape)


class Grace:
    """GRACE's editor (see the module docstring): ``layer`` names the wrapped linear layer (for GPT-2,
    ``"transformer.h.{l}.mlp.c_proj"``), ``radius`` is the initial deferral radius ``eps_init``,
    ``steps``/``lr`` train each new value. One request per call, as GRACE edits a stream."""

    name = "GRACE"
    paper = "Hartvigsen et al., 2023, Aging with GRACE (NeurIPS)"
    max_requests = 1

    def __init__(self, layer: str, radius: float = 1.0, steps: int = 50, lr: float = 1.0):
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a module name such as 'transformer.h.2.mlp.c_proj', got "
                            f"{type(layer).__name__}")
        self.layer = layer
        self.radius = checks.positive(radius, "radius")
        self.steps = checks.positive_int(steps, "steps")
        self.lr = checks.positive(lr, "lr")

    def _adaptor(self, model: nn.Module, snapshot: ModelSnapshot) -> GraceLayer:
        module = get_module(model, self.layer)
        if isinstance(module, GraceLayer):
            return module
        if not (isinstance(module, nn.Linear) or is_conv1d(module)):
            raise TypeError(f"GRACE wraps a linear layer; {self.layer!r} is a {type(module).__name__}")
        return snapshot.replace_module(self.layer, GraceLayer(module))

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        (request,) = check_requests(requests, tokenizer, self.max_requests, self.name)
        snapshot = ModelSnapshot(model)
        adaptor = self._adaptor(model, snapshot)
        n_before = len(adaptor.keys)
        saved = (adaptor.keys.clone(), adaptor.radii.clone(), adaptor.labels.clone())
        dev = device_of(model)
        batch = {k: v.to(dev) for k, v in encode(tokenizer, [request.prompt]).items()}
        label = target_ids(tokenizer, [request.target_new]).to(dev)
        with torch.no_grad(), eval_mode(model), capture_inputs(model, [self.layer]) as ins:
            logits = model(**batch).logits
        key = ins[self.layer][0, -1]                                 # the last prompt token's input
        start = adaptor.base(key)                                    # v starts as f(k): no change yet
        self._place(adaptor, key, label.item())
        adaptor.values.append(nn.Parameter(start.detach().clone()))
        self._train_value(model, adaptor, batch, label, logits.shape[-1])

        def undo() -> nn.Module:
            with torch.no_grad():
                adaptor.keys, adaptor.radii, adaptor.labels = saved
                adaptor.values = nn.ParameterList(list(adaptor.values)[:n_before])
            return snapshot.restore()

        return Edit(model, undo, self.name, [request])

    @torch.no_grad()
    def _place(self, adaptor: GraceLayer, key: torch.Tensor, label: int) -> None:
        eps = torch.tensor([self.radius], device=key.device, dtype=key.dtype)
        if len(adaptor.keys):
            dist = (adaptor.keys - key).norm(dim=-1)
            d, i = dist.min(0)
            if d <= adaptor.radii[i] + self.radius and adaptor.labels[i] != label:
                # split: the conflicting entry and the new one each get half the distance
                adaptor.radii[i] = eps[0] = d / 2
        adaptor.keys = torch.cat([adaptor.keys, key[None]])
        adaptor.radii = torch.cat([adaptor.radii, eps])
        adaptor.labels = torch.cat([adaptor.labels, adaptor.labels.new_tensor([label])])

    def _train_value(self, model, adaptor, batch, label, vocab) -> None:
        value = adaptor.values[-1]
        flags = [(p, p.requires_grad) for p in model.parameters()]
        model.requires_grad_(False)
        value.requires_grad_(True)
        optimiser = torch.optim.Adam([value], lr=self.lr)
        try:
            with eval_mode(model):
                for _ in range(self.steps):
                    logits = model(**batch).logits[:, -1]            # the next token after the prompt
                    loss = nn.functional.cross_entropy(logits, label)
                    if logits.argmax(-1).item() == label.item() and loss.item() < 0.1:
                        break
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            value.requires_grad_(False)
