"""Gradient-based meta-learning: MAML, first-order MAML, ANIL and Reptile, over one shared inner loop.

MAML (Finn et al., 2017, Algorithm 1) learns an initialisation ``theta`` from which a few gradient steps on
a task's support set fit the task: the inner loop is ``theta'_i = theta - alpha * grad L_support_i(theta)``
(their Eq. 1), the meta-objective ``min_theta sum_i L_query_i(theta'_i)`` (Eq. 2) and its gradient goes
through the inner steps, a second-order term included. First-order MAML (FOMAML, Finn et al., Sec. 5.2)
drops that term: the meta-gradient is the query gradient at ``theta'_i``. ANIL (Raghu et al., 2020) adapts
the head only in the inner loop; the body is meta-learned but frozen within a task. Reptile (Nichol et al.,
2018, Algorithm 2) needs no query set: it moves ``theta`` towards the adapted weights,
``theta <- theta + epsilon * mean_i (theta'_i - theta)``.

Every method calls the one :func:`inner_loop`, written with ``torch.func``: ``functional_call`` runs the
model with the adapted weights, ``grad`` differentiates a task's loss, and ``vmap`` maps the whole inner
loop over the task dimension of a batch of episodes, so a batch of tasks is one batched computation.
Meta-training goes through ``lfm_ref.fit``: each ``*_objective`` returns a ``loss_fn(model, batch)`` over
a batch of episodes (a loader from :meth:`~lfm_ref.meta.episodes.EpisodeSampler.loader`).

Chapter: notebooks/14_learning_to_learn.ipynb.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .. import checks
from ..utils import device_of, eval_mode
from .episodes import Episode


class SineNet(nn.Module):
    """Finn et al. (2017, Sec. 5.1)'s regressor: 1 input, two hidden layers of 40 ReLU units, 1 output."""

    def __init__(self, hidden: int = 40):
        super().__init__()
        hidden = checks.positive_int(hidden, "hidden")
        self.body = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss of a task: cross-entropy for class labels, mean squared error for float targets."""
    if targets.is_floating_point():
        return F.mse_loss(outputs, targets)
    return F.cross_entropy(outputs, targets)


def _support(support) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(support, Episode):
        if support.batched:
            raise ValueError("inner_loop adapts to one task; pass episode.task(i), or use maml_objective "
                             "/ adapt_batch for a batch of tasks")
        return support.support
    if isinstance(support, (tuple, list)) and len(support) == 2:
        return tuple(support)
    raise TypeError(f"support must be an Episode or an (x, y) pair, got {type(support).__name__}")


def _check_inner(steps, lr, loss_fn) -> tuple[int, float, Callable]:
    steps = checks.integer(steps, "steps", minimum=0)
    lr = checks.positive(lr, "lr")  # the inner learning rate alpha of Finn et al.'s Eq. 1
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    return steps, lr, loss_fn or task_loss


def _adapted_names(model: nn.Module, adapt) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    if adapt is None:
        return names
    if isinstance(adapt, str):
        adapt = [n for n in names if n == adapt or n.startswith(adapt + ".")]  # a module's name: its params
    adapt = list(adapt)
    unknown = [n for n in adapt if n not in names]
    if unknown or not adapt:
        raise ValueError(f"adapt must name parameters of the model (or a module, e.g. 'head'), got {unknown or adapt}; "
                         f"the model's parameters are {names}")
    return adapt


def inner_loop(model: nn.Module, params: dict[str, torch.Tensor], support, steps: int,
               lr: float, first_order: bool = False,
               loss_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """``steps`` gradient steps of one task from ``params``, returned as a new dict:
    ``theta' = theta - lr * grad L_support(theta)`` (Finn et al., 2017, Eq. 1).

    ``params`` maps parameter names to the tensors to adapt (all of them for MAML, the
    head's for ANIL); the model's other parameters enter as they are. Without
    ``first_order`` the result stays a differentiable function of ``params``, so a
    meta-gradient through it has MAML's second-order term; with it, the inner gradients
    are constants (FOMAML). ``support`` is an ``(x, y)`` pair or a single Episode;
    ``loss_fn(outputs, targets)`` defaults to :func:`task_loss`. Works under ``vmap``.
    """
    checks.module(model)
    if not (isinstance(params, dict)
            and all(isinstance(v, torch.Tensor) for v in params.values())):
        raise TypeError(f"params must be a dict of parameter names to tensors, "
                        f"got {type(params).__name__}")
    steps, lr, loss_fn = _check_inner(steps, lr, loss_fn)
    x, y = _support(support)
    fixed = {n: p for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def support_loss(adapted):
        return loss_fn(functional_call(model, ({**fixed, **adapted}, buffers), (x,)), y)

    for _ in range(steps):
        # FOMAML: a gradient at detached weights is a constant, d theta'/d theta = I
        at = {n: p.detach() for n, p in params.items()} if first_order else params
        grads = grad(support_loss)(at)
        params = {n: p - lr * grads[n] for n, p in params.items()}  # Eq. 1
    return params


def adapt_batch(model: nn.Module, episodes: Episode, steps: int, lr: float, first_order: bool = False,
                adapt=None, loss_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """:func:`inner_loop` on every task of a batch of episodes at once (``vmap``): a dict of adapted
    parameters, each with a leading task dimension. ``adapt`` names the parameters to adapt (a list, or a
    module's name such as ``"head"``); all of them by default."""
    if not isinstance(episodes, Episode) or not episodes.batched:
        raise TypeError("adapt_batch expects a batch of Episodes (a leading task dimension; "
                        "sampler.batch(n_tasks, generator))")
    steps, lr, loss_fn = _check_inner(steps, lr, loss_fn)
    names = _adapted_names(checks.module(model), adapt)
    params = {n: p for n, p in model.named_parameters() if n in names}

    def one_task(sx, sy):
        return inner_loop(model, params, (sx, sy), steps, lr, first_order, loss_fn)

    return vmap(one_task)(episodes.support_x, episodes.support_y)


def query_outputs(model: nn.Module, adapted: dict[str, torch.Tensor], query_x: torch.Tensor) -> torch.Tensor:
    """The model's outputs on a batch of query inputs ``(T, n, ...)`` with the per-task weights of
    :func:`adapt_batch` (the other parameters shared by all tasks)."""
    fixed = {n: p for n, p in model.named_parameters() if n not in adapted}
    buffers = dict(model.named_buffers())

    def one_task(params, x):
        return functional_call(model, ({**fixed, **params}, buffers), (x,))

    return vmap(one_task)(adapted, query_x)


def maml_objective(steps: int = 1, lr: float = 0.01, first_order: bool = False,
                   loss_fn: Callable | None = None,
                   adapt=None) -> Callable[[nn.Module, Episode], torch.Tensor]:
    """MAML's meta-loss (Finn et al., 2017, Eq. 2) as a ``loss_fn(model, batch)`` for
    ``lfm_ref.fit``: the mean query loss of a batch of episodes after ``steps`` inner
    steps at learning rate ``lr``.

    ``first_order=True`` is FOMAML (the second-order term dropped); ``adapt="head"`` (or
    a list of parameter names) adapts those only, which is ANIL (Raghu et al., 2020).
    ``loss_fn(outputs, targets)`` is the task loss (cross-entropy or MSE by default).
    Finn et al.'s sine setting is ``steps=1, lr=0.01``.
    """
    steps, lr, task = _check_inner(steps, lr, loss_fn)

    def objective(model: nn.Module, batch: Episode) -> torch.Tensor:
        batch = _episodes(batch, model)
        names = _adapted_names(model, adapt)
        params = {n: p for n, p in model.named_parameters() if n in names}
        fixed = {n: p for n, p in model.named_parameters() if n not in names}
        buffers = dict(model.named_buffers())

        def one_task(sx, sy, qx, qy):  # adapt on the support, score on the query
            adapted = inner_loop(model, params, (sx, sy), steps, lr, first_order, task)
            out = functional_call(model, ({**fixed, **adapted}, buffers), (qx,))
            return task(out, qy)

        # one vmap over the task dimension: the whole batch is one computation
        losses = vmap(one_task)(batch.support_x, batch.support_y,
                                batch.query_x, batch.query_y)
        return losses.mean()  # Eq. 2, averaged over the tasks of the batch

    return objective


def anil_objective(steps: int = 1, lr: float = 0.01, head: str = "head", first_order: bool = False,
                   loss_fn: Callable | None = None) -> Callable[[nn.Module, Episode], torch.Tensor]:
    """ANIL (Raghu et al., 2020): MAML with the inner loop on the head only, ``maml_objective(adapt=head)``."""
    return maml_objective(steps, lr, first_order, loss_fn, adapt=head)


def reptile_objective(steps: int = 5, lr: float = 0.01, loss_fn: Callable | None = None,
                      adapt=None) -> Callable[[nn.Module, Episode], torch.Tensor]:
    """Reptile (Nichol et al., 2018, Algorithm 2) as a ``loss_fn(model, batch)`` for ``lfm_ref.fit``.

    The loss is ``1/2 mean_i ||theta - stopgrad(theta'_i)||^2``, ``theta'_i`` the weights after ``steps``
    SGD steps at ``lr`` on task ``i``'s support set; its gradient is ``mean_i (theta - theta'_i)``, so SGD
    at learning rate ``epsilon`` is Reptile's update ``theta <- theta + epsilon mean_i (theta'_i - theta)``,
    and AdamW (``fit``'s optimiser) is the Adam-on-Reptile-direction Nichol et al. use in their experiments.
    Reptile uses the support sets only; for Nichol et al.'s "several batches" put more points in the support.
    """
    steps = checks.positive_int(steps, "steps")
    steps, lr, task = _check_inner(steps, lr, loss_fn)

    def objective(model: nn.Module, batch: Episode) -> torch.Tensor:
        batch = _episodes(batch, model)
        adapted = adapt_batch(model, batch, steps, lr, True, adapt, task)
        params = dict(model.named_parameters())
        # 1/2 ||theta - theta'||^2 summed over parameters, averaged over tasks: gradient theta - mean theta'
        return sum(0.5 * (params[n] - a.detach()).pow(2).flatten(1).sum(1).mean() for n, a in adapted.items())

    return objective


def _episodes(batch, model: nn.Module) -> Episode:
    if not isinstance(batch, Episode) or not batch.batched:
        raise TypeError(f"a meta-loss expects a batch of Episodes (a leading task dimension), got "
                        f"{type(batch).__name__}; draw batches with sampler.loader(...) or sampler.batch(...)")
    return batch.to(device_of(model))


def adapted_query_outputs(model: nn.Module, episodes: Episode, steps: int, lr: float, adapt=None,
                          loss_fn: Callable | None = None) -> torch.Tensor:
    """The query outputs of a batch of episodes after ``steps`` inner steps from the model's weights:
    meta-test of MAML, FOMAML, ANIL and Reptile, and plain fine-tuning from any initialisation. The model's
    own weights are not changed and it is run in eval mode."""
    episodes = _episodes(episodes, model)
    # torch.func.grad differentiates inside an outer no_grad, so the inner steps run and no graph is kept
    with eval_mode(model), torch.no_grad():
        adapted = adapt_batch(model, episodes, steps, lr, True, adapt, loss_fn)
        return query_outputs(model, adapted, episodes.query_x)


def mse_over_steps(model: nn.Module, episodes: Episode, max_steps: int, lr: float, adapt=None) -> torch.Tensor:
    """Mean query MSE of a batch of regression episodes after 0, 1, ..., ``max_steps`` inner steps at
    ``lr`` (Finn et al., 2017, Fig. 3's curve): a tensor of ``max_steps + 1`` values."""
    max_steps = checks.integer(max_steps, "max_steps", minimum=0)
    if not isinstance(episodes, Episode) or not episodes.regression:
        raise TypeError("mse_over_steps expects a batch of regression Episodes (SinusoidTasks.batch)")
    curve = []
    for steps in range(max_steps + 1):  # tiny models: recomputing each prefix costs less than threading it
        out = adapted_query_outputs(model, episodes, steps, lr, adapt)
        curve.append(F.mse_loss(out, episodes.to(out.device).query_y).item())
    return torch.tensor(curve)


def parameter_names(model: nn.Module, prefix: str) -> list[str]:
    """The names of ``model``'s parameters under the module ``prefix`` (``"head"``): ANIL's adapted set."""
    return _adapted_names(checks.module(model), prefix)


__all__: Iterable[str] = ["SineNet", "task_loss", "inner_loop", "adapt_batch", "query_outputs", "maml_objective",
                          "anil_objective", "reptile_objective", "adapted_query_outputs", "mse_over_steps",
                          "parameter_names"]
