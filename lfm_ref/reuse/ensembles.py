"""Ensembles: combining the *outputs* of several models, and two ways to pay for fewer of them.

- :func:`average_probabilities` and :func:`majority_vote`: the classic combiners of members' predictions.
- :class:`StackingCombiner`: stacked generalisation (Wolpert, 1992, Neural Networks 5(2)): a small model
  trained on held-out data to combine the members' log-probabilities.
- :class:`BatchEnsembleLinear`, :class:`BatchEnsembleConv2d` and :class:`BatchEnsemble`: BatchEnsemble (Wen,
  Tran & Ba, 2020, ICLR; arXiv:2002.06715). Member ``i`` of a layer uses ``W_i = W * (s_i r_i^T)``, a shared
  weight times a rank-1 "fast weight", computed without forming ``W_i``: ``y = ((x * r_i) W^T) * s_i + b_i``
  (for a convolution, ``r_i`` scales the input channels and ``s_i`` the output channels).
- :class:`LinearizedModel` and :func:`tangent_compose`: Tangent Model Composition (Liu & Soatto, 2023,
  ICCV; arXiv:2307.08114). Components are fine-tuned in the tangent space of the pretrained model,
  ``f_lin(x; Delta) = f(x; theta_0) + J_theta f(x; theta_0) Delta``; since ``f_lin`` is linear in ``Delta``,
  the ensemble of components is *one* tangent model: ``sum_i w_i f_lin(x; Delta_i) = f_lin(x; sum_i w_i Delta_i)``
  for ``sum_i w_i = 1``, at the inference cost of one model.

Training the combiner and the BatchEnsemble members goes through :func:`lfm_ref.fit` with
:func:`stacking_objective` and :func:`batch_ensemble_objective`.

Chapter: notebooks/10_ensembles.ipynb
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import checks
from ..hooks import get_module, set_module
from ..train import predict


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError("expected the members' logits stacked as a (members, examples, classes) "
                        f"tensor, got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError("expected the members' logits stacked as (members, examples, classes), got "
                         f"shape {tuple(logits.shape)}")
    if len(logits) == 0:
        raise ValueError("the ensemble has no members")
    return logits


def member_logits(models: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The members' outputs on ``x``, stacked as ``(members, examples, classes)``."""
    if isinstance(models, nn.Module) or len(models) == 0:
        raise ValueError("member_logits takes a non-empty list of models")
    return torch.stack([predict(m, x) for m in models])


def average_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``p(y|x) = (1/M) sum_i softmax(f_i(x))``: the ensemble's predictive distribution,
    ``(examples, classes)``."""
    return _check_logits(logits).softmax(-1).mean(0)


def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """The class most members predict, ``(examples,)``; ties go to the class with the
    larger mean probability."""
    logits = _check_logits(logits)
    # (examples, classes): how many members vote for each class
    votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).sum(0).float()
    # mean probabilities lie in [0, 1): adding half of them breaks ties without
    # overturning a vote count
    return (votes + 0.5 * logits.softmax(-1).mean(0)).argmax(-1)


class StackingCombiner(nn.Module):
    """Stacking with one learned weight per member: ``g(x) = sum_i w_i log softmax f_i(x) + b``, fitted on
    held-out data.

    Breiman (1996, "Stacked regressions", Machine Learning 24) found that a combiner with few parameters
    (one weight per member) generalises where a richer one overfits the held-out set. ``w`` starts at
    ``1/M`` and ``b`` at 0, so an untrained combiner is the geometric-mean ensemble.
    """

    def __init__(self, n_members: int, n_classes: int):
        super().__init__()
        n_members = checks.positive_int(n_members, "n_members")
        n_classes = checks.integer(n_classes, "n_classes", minimum=2)
        self.n_members, self.n_classes = n_members, n_classes
        self.weight = nn.Parameter(torch.full((n_members,), 1.0 / n_members))
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits``: the members' outputs ``(members, examples, classes)``; returns
        ``(examples, classes)``."""
        logits = _check_logits(logits)
        if logits.shape[0] != self.n_members or logits.shape[2] != self.n_classes:
            raise ValueError(f"the combiner expects ({self.n_members} members, "
                             f"examples, {self.n_classes} classes), got "
                             f"{tuple(logits.shape)}")
        # g(x) = sum_i w_i log softmax f_i(x) + b
        combined = torch.einsum("m,mbc->bc", self.weight, logits.log_softmax(-1))
        return combined + self.bias


def stacking_objective():
    """``loss_fn(combiner, batch)`` for :func:`lfm_ref.fit`: the combiner's cross-entropy on
    ``(logits, y)`` batches with ``logits`` of shape ``(examples, members, classes)`` (the examples
    first, so that ``fit`` can batch them)."""

    def loss_fn(combiner: StackingCombiner, batch) -> torch.Tensor:
        logits, y = batch
        return F.cross_entropy(combiner(logits.transpose(0, 1)), y)

    return loss_fn


# ----- BatchEnsemble ----------------------------------------------------------------------------------
def _fast_weights(n_members: int, n_in: int, n_out: int, init: str, init_std: float,
                  generator: torch.Generator | None) -> tuple[nn.Parameter, nn.Parameter]:
    """The fast weights ``r`` ``(members, n_in)`` and ``s`` ``(members, n_out)`` of a BatchEnsemble layer.

    ``init="random_sign"``: entries +1 or -1 with equal probability, Wen et al.'s initialisation for
    training from scratch (members start as different, equally scaled networks); ``"normal"``:
    ``1 + init_std * N(0, 1)``, near the shared weights, for a pretrained start. Drawn from ``generator``
    (seed 0 by default), never from the global stream.
    """
    init = checks.choice(init, "init", ("normal", "random_sign"))
    init_std = checks.number(init_std, "init_std", low=0.0)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    if init == "random_sign":
        r, s = (2.0 * torch.randint(0, 2, (n_members, n), generator=generator) - 1 for n in (n_in, n_out))
    else:
        r, s = (1 + init_std * torch.randn(n_members, n, generator=generator) for n in (n_in, n_out))
    return nn.Parameter(r.float()), nn.Parameter(s.float())


class BatchEnsembleLinear(nn.Module):
    """``y = ((x * r_i) W^T) * s_i + b_i`` for the rows of member ``i``.

    Inputs hold the members' rows one after another: ``(members * batch, ..., in_features)``. ``W`` is
    shared; ``r_i``, ``s_i`` (the rank-1 fast weight ``s_i r_i^T``) and ``b_i`` belong to member ``i``.
    ``init="normal"`` starts the fast weights at ``1 + init_std * N(0, 1)`` (near the wrapped layer, for a
    pretrained model); ``init="random_sign"`` at random signs, the paper's start for training from scratch.
    """

    def __init__(self, linear: nn.Linear, n_members: int, init_std: float = 0.5,
                 generator: torch.Generator | None = None, init: str = "normal"):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"BatchEnsembleLinear wraps an nn.Linear, got {type(linear).__name__}")
        self.n_members = checks.positive_int(n_members, "n_members")
        self.weight = nn.Parameter(linear.weight.detach().clone())
        out_f, in_f = linear.weight.shape
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(out_f)
        self.bias = nn.Parameter(bias.clone().repeat(n_members, 1))
        self.r, self.s = _fast_weights(n_members, in_f, out_f, init, init_std, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.n_members:
            raise ValueError(f"BatchEnsembleLinear expects members * batch rows "
                             f"({self.n_members} members), got {x.shape[0]}")
        xm = x.view(self.n_members, -1, *x.shape[1:])            # (M, B, ..., in)
        shape = (self.n_members,) + (1,) * (xm.dim() - 2) + (-1,)  # over B, ...
        y = F.linear(xm * self.r.view(shape), self.weight)         # (x * r_i) W^T
        y = y * self.s.view(shape) + self.bias.view(shape)         # ... * s_i + b_i
        return y.view(*x.shape[:-1], -1)                           # (M * B, ..., out)


class BatchEnsembleConv2d(nn.Module):
    """A convolution with a rank-1 fast weight per member: ``y = conv(x * r_i, W) * s_i + b_i``, with
    ``r_i`` over the input channels and ``s_i`` over the output channels (Wen et al., 2020, Sec. 3: the
    convolutional form, ``W_i = W * (s_i r_i^T)`` over the channel dimensions).

    Inputs hold the members' rows one after another: ``(members * batch, channels, H, W)``.
    """

    def __init__(self, conv: nn.Conv2d, n_members: int, init_std: float = 0.5,
                 generator: torch.Generator | None = None, init: str = "normal"):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"BatchEnsembleConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"conv must be an ungrouped, zero-padded nn.Conv2d, got groups={conv.groups}, "
                             f"padding_mode={conv.padding_mode!r}")
        self.n_members = checks.positive_int(n_members, "n_members")
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        out_c, in_c = conv.weight.shape[:2]
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(out_c)
        self.bias = nn.Parameter(bias.clone().repeat(n_members, 1))
        self.r, self.s = _fast_weights(n_members, in_c, out_c, init, init_std, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[0] % self.n_members:
            raise ValueError(f"BatchEnsembleConv2d expects members * batch rows "
                             f"({self.n_members} members) of (channels, H, W), "
                             f"got shape {tuple(x.shape)}")
        m = self.n_members
        per_channel = (m, 1, -1, 1, 1)  # (member, batch, channel, H, W)
        xm = x.view(m, -1, *x.shape[1:]) * self.r.view(per_channel)  # x * r_i
        # (x * r_i) conv W, every member's rows in one call
        y = F.conv2d(xm.flatten(0, 1), self.weight, None, self.stride, self.padding,
                     self.dilation)
        y = y.view(m, -1, *y.shape[1:])
        y = y * self.s.view(per_channel) + self.bias.view(per_channel)  # * s_i + b_i
        return y.flatten(0, 1)  # (M * B, out, H', W')


class BatchEnsemble(nn.Module):
    """A model whose linear and convolutional layers named in ``layers`` are BatchEnsemble layers; the other
    layers (normalisation, pooling) are shared.

    :meth:`members` runs every member on its own inputs ``(members, batch, ...)`` and returns
    ``(members, batch, classes)``; calling the model on ``(batch, ...)`` gives every member the same
    inputs and returns the log of the averaged probabilities (the ensemble's prediction). Either way all
    members travel in one batch through the shared weights: one forward pass, ``members`` times the rows.
    ``init`` chooses the fast weights' start (see :class:`BatchEnsembleLinear`): ``"random_sign"`` for a
    model trained from scratch (the paper's setting), ``"normal"`` around 1 for a pretrained one.
    """

    def __init__(self, model: nn.Module, n_members: int, layers: Sequence[str], init_std: float = 0.5, seed: int = 0,
                 init: str = "normal"):
        super().__init__()
        if isinstance(layers, str) or len(layers) == 0:
            raise ValueError(f"layers must be a non-empty list of nn.Linear / nn.Conv2d names, got {layers!r}")
        n_members = checks.positive_int(n_members, "n_members")
        self.model, self.n_members = copy.deepcopy(model), n_members
        generator = torch.Generator().manual_seed(checks.integer(seed, "seed"))
        for name in layers:
            old = get_module(self.model, name)
            wrap = BatchEnsembleConv2d if isinstance(old, nn.Conv2d) else BatchEnsembleLinear
            layer = wrap(old, n_members, init_std, generator, init)
            set_module(self.model, name, layer.to(old.weight.device))

    def members(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.n_members:
            raise ValueError(f"members() expects inputs of shape ({self.n_members}, batch, ...), got {tuple(x.shape)}")
        out = self.model(x.flatten(0, 1))  # the members' rows one after another
        return out.view(self.n_members, x.shape[1], *out.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.members(x.unsqueeze(0).expand(self.n_members, *x.shape))
        return average_probabilities(logits).log()


def batch_ensemble_objective():
    """``loss_fn(model, batch)`` for :func:`lfm_ref.fit`: the cross-entropy of every member of a
    :class:`BatchEnsemble` on its own examples; ``batch = (x, y)`` with ``x`` of shape
    ``(batch, members, ...)`` and ``y`` of shape ``(batch, members)`` (see :func:`member_batches`)."""

    def loss_fn(model: BatchEnsemble, batch) -> torch.Tensor:
        x, y = batch
        logits = model.members(x.transpose(0, 1))  # (members, batch, classes)
        return F.cross_entropy(logits.flatten(0, 1), y.transpose(0, 1).flatten())

    return loss_fn


def member_batches(shards: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zip the members' data sets (each an ``(x, y)`` pair) into tensors ``(n, members, ...)``, truncated to the
    shortest, so that one mini-batch holds the same number of examples of every member's own data."""
    if len(shards) == 0:
        raise ValueError("member_batches needs one (x, y) data set per member, got none")
    n = min(len(x) for x, _ in shards)
    return torch.stack([x[:n] for x, _ in shards], 1), torch.stack([y[:n] for _, y in shards], 1)


# ----- Tangent Model Composition ----------------------------------------------------------------------
class LinearizedModel(nn.Module):
    """``f_lin(x; Delta) = f(x; theta_0) + J_theta f(x; theta_0) Delta`` with a trainable ``Delta`` (zero at start).

    ``trainable`` lists name prefixes of the parameters to linearise (all by default); the others stay at
    ``theta_0``. The Jacobian-vector product is one forward-mode pass (``torch.func.jvp``), never a Jacobian.
    """

    def __init__(self, model: nn.Module, trainable: Sequence[str] | None = None):
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        named = dict(self.model.named_parameters())
        self.names = [n for n in named if trainable is None or n.startswith(tuple(trainable))]
        if not self.names:
            raise ValueError(f"no parameter name starts with any of {list(trainable)}; names look like "
                             f"{list(named)[:4]}")
        self.delta = nn.ParameterList([nn.Parameter(torch.zeros_like(named[n])) for n in self.names])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        named = dict(self.model.named_parameters())
        theta0 = {n: named[n] for n in self.names}
        tangent = dict(zip(self.names, self.delta))

        def f(params):
            return functional_call(self.model, params, (x,))

        # forward-mode AD needs attention in plain ops: the fused CPU kernel has no
        # forward derivative
        with sdpa_kernel(SDPBackend.MATH):
            out, directional = jvp(f, (theta0,), (tangent,))
        return out + directional  # f(x; theta_0) + J Delta


def tangent_compose(components: Sequence[LinearizedModel],
                    weights: Sequence[float] | None = None) -> LinearizedModel:
    """One tangent model with ``Delta = sum_i w_i Delta_i`` (uniform ``w_i = 1/M`` by
    default): the ensemble of the components, computed as one model."""
    if isinstance(components, nn.Module) or len(components) == 0:
        raise ValueError("tangent_compose takes a non-empty list of LinearizedModel "
                         "components")
    if not all(isinstance(c, LinearizedModel) for c in components):
        raise TypeError("every component must be a LinearizedModel (fine-tuned in the "
                        "tangent space)")
    first = components[0]
    for i, c in enumerate(components[1:], start=1):
        same = zip(c.model.parameters(), first.model.parameters())
        if c.names != first.names or any(not torch.equal(a, b) for a, b in same):
            raise ValueError(f"component {i} is linearised around a different model or "
                             f"set of parameters than component 0")
    if weights is None:
        weights = [1 / len(components)] * len(components)
    else:
        weights = [checks.number(w, "each weight") for w in weights]
    if len(weights) != len(components):
        raise ValueError(f"got {len(weights)} weights for {len(components)} components")
    composed = copy.deepcopy(first)
    with torch.no_grad():
        for i, delta in enumerate(composed.delta):
            delta.copy_(sum(w * c.delta[i] for w, c in zip(weights, components)))
    return composed
