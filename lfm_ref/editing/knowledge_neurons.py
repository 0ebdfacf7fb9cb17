"""Knowledge neurons: the FFN neurons whose activation a fact depends on, found by integrated gradients.

Dai et al. (ACL 2022), *Knowledge neurons in pretrained transformers*. A neuron is one intermediate
unit ``i`` of block ``l``'s FFN: its activation ``w_i`` (the input of the output projection) at the
token that predicts. With ``P_x(w)`` the probability of the answer ``y`` when the layer's activations
there are set to ``w``, the attribution of neuron ``i`` is the integrated gradient along the path
``alpha * w_bar`` from zero to the activations ``w_bar`` of the prompt (their Eq. 3-4):

    Attr(w_i) = w_bar_i * int_0^1 dP_x(alpha w_bar) / dw_i  d alpha
             ~ w_bar_i / m * sum_{j=1}^m dP_x((j - 1/2)/m * w_bar) / dw_i          (midpoint rule)

The attributions of a layer sum to ``P_x(w_bar) - P_x(0)`` (completeness), up to the quadrature.
The fact's knowledge neurons are those above ``threshold`` times the largest attribution in at least
``share`` of the prompts that state it (paraphrases), which removes neurons that belong to a wording.
Suppressing them (activation times 0) or amplifying them (times 2) moves ``P(y)``, and an edit
changes their value slots, the columns ``W[:, i]`` of the output projection: ``W[:, i] += lambda
(e(o*) - e(o))`` with ``e`` the word embeddings (their section 5.2).

Chapter: notebooks/18_locate_and_edit.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import checks
from ..hooks import capture_outputs, get_module, linear_weight, patch_outputs
from ..lm import encode, target_ids
from ..utils import device_of, eval_mode
from .base import Edit, EditRequest, ModelSnapshot, check_requests, frozen
from .finetune import mlp_name

__all__ = ["integrated_gradients", "find_knowledge_neurons", "neuron_probability",
           "KnowledgeNeuronEditor"]


def integrated_gradients(model: nn.Module, tokenizer, prompt: str, target: str,
                         layer: int, steps: int = 20) -> torch.Tensor:
    """``Attr(w_i)`` for every neuron of block ``layer``'s FFN at the last token of
    ``prompt``, ``(m,)``, on the CPU (module docstring). The model gets no gradient."""
    checks.module(model)
    steps = checks.positive_int(steps, "steps")
    if not isinstance(prompt, str) or not prompt.strip():
        raise TypeError(f"prompt must be a non-empty string, got "
                        f"{type(prompt).__name__} ({prompt!r:.60})")
    name = mlp_name(model, layer, "mlp.act")
    dev = device_of(model)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=dev)  # (1, T)
    y = target_ids(tokenizer, [target]).item()
    with torch.no_grad(), eval_mode(model), capture_outputs(model, [name]) as acts:
        model(input_ids=ids)
    w_bar = acts[name][0, -1]                                               # (m,)
    alphas = (torch.arange(steps, device=dev, dtype=w_bar.dtype) + 0.5) / steps
    scaled = (alphas[:, None] * w_bar[None]).requires_grad_(True)           # (steps, m)

    def set_last(h):  # the activations where it predicts <- alpha_j * w_bar
        h = h.clone()
        h[:, -1] = scaled
        return h

    with frozen(model), eval_mode(model), patch_outputs(model, {name: set_last}):
        logits = model(input_ids=ids.expand(steps, -1)).logits[:, -1]   # (steps, V)
        p = logits.float().softmax(-1)[:, y]                    # P_x(alpha_j w_bar)
        (grad,) = torch.autograd.grad(p.sum(), scaled)
    return (w_bar * grad.mean(0)).detach().cpu()             # the midpoint rule


def find_knowledge_neurons(model: nn.Module, tokenizer, prompts: Sequence[str], target: str,
                      layers: Sequence[int] | None = None, threshold: float = 0.2,
                      share: float = 0.5, steps: int = 20) -> list[tuple[int, int]]:
    """The ``(layer, neuron)`` pairs whose attribution exceeds ``threshold`` times the prompt's largest
    (over all ``layers``; default every block) in at least ``share`` of ``prompts``."""
    prompts = checks.texts(prompts, "prompts")
    threshold = checks.probability(threshold, "threshold")
    share = checks.probability(share, "share")
    n_layer = len(getattr(getattr(model, "transformer", None), "h", ()))
    layers = list(range(n_layer)) if layers is None else [checks.integer(x, "layer") for x in layers]
    votes: dict[tuple[int, int], int] = {}
    for prompt in prompts:
        attr = torch.stack([integrated_gradients(model, tokenizer, prompt, target, x, steps)
                            for x in layers])                                # (layers, m)
        for li, i in (attr > threshold * attr.max()).nonzero().tolist():
            votes[(layers[li], i)] = votes.get((layers[li], i), 0) + 1
    return sorted(n for n, v in votes.items() if v >= share * len(prompts))


@torch.no_grad()
def neuron_probability(model: nn.Module, tokenizer, prompts: Sequence[str], targets: Sequence[str],
                       neurons: Sequence[tuple[int, int]] = (), factor: float = 1.0) -> torch.Tensor:
    """``P(target)`` after each prompt with the activations of ``neurons`` at the predicting token
    multiplied by ``factor`` (0 suppresses, 2 amplifies), ``(len(prompts),)`` on the CPU."""
    prompts, targets = checks.texts(prompts, "prompts"), checks.texts(targets, "targets")
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets")
    factor = checks.number(factor, "factor")
    dev = device_of(model)
    batch = {k: v.to(dev) for k, v in encode(tokenizer, prompts).items()}
    rows = torch.arange(len(prompts), device=dev)
    last = batch["attention_mask"].sum(1) - 1
    by_layer: dict[int, list[int]] = {}
    for layer, i in neurons:
        by_layer.setdefault(layer, []).append(i)

    def scaler(idx):
        def fn(h):
            h = h.clone()
            cols = torch.tensor(idx, device=h.device)
            h[rows[:, None], last[:, None], cols] *= factor  # w_i <- factor * w_i where it predicts
            return h
        return fn

    patches = {mlp_name(model, layer, "mlp.act"): scaler(idx) for layer, idx in by_layer.items()}
    with eval_mode(model), patch_outputs(model, patches):
        logits = model(**batch).logits[rows, last]
    return logits.float().softmax(-1)[rows, target_ids(tokenizer, targets).to(dev)].cpu()


class KnowledgeNeuronEditor:
    """Dai et al.'s fact update (module docstring): find the knowledge neurons of ``target_true``
    from the prompt and its pretraining paraphrases (never the held-out one), then add
    ``scale * (e(o*) - e(o))`` to each one's value slot. One request per call."""

    name = "KN"
    paper = "Dai et al. (ACL 2022), Knowledge neurons in pretrained transformers"
    max_requests = 1

    def __init__(self, layers: Sequence[int] | None = None, threshold: float = 0.2,
                 share: float = 0.5, steps: int = 20, scale: float = 1.0):
        self.layers = layers
        self.threshold, self.share = threshold, share
        self.steps = checks.positive_int(steps, "steps")
        self.scale = checks.positive(scale, "scale")
        self.neurons: list[tuple[int, int]] = []  # those of the last edit, for a look

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> Edit:
        (r,) = check_requests(requests, tokenizer, self.max_requests, self.name)
        prompts = [r.prompt, *r.paraphrases[:-1]]
        self.neurons = find_knowledge_neurons(model, tokenizer, prompts, r.target_true, self.layers,
                                         self.threshold, self.share, self.steps)
        names = sorted({mlp_name(model, layer) for layer, _ in self.neurons})
        snapshot = ModelSnapshot(model, parameters=[n + ".weight" for n in names])
        embed = model.get_input_embeddings().weight
        old, new = target_ids(tokenizer, [r.target_true, r.target_new]).tolist()
        with torch.no_grad():
            shift = self.scale * (embed[new] - embed[old])                # lambda (e(o*) - e(o))
            for layer, i in self.neurons:
                linear_weight(get_module(model, mlp_name(model, layer)))[:, i] += shift  # v_i
        return Edit(model, snapshot.restore, self.name, [r])
