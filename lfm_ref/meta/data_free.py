"""Data-free meta-learning: meta-learn from a zoo of task models, without one real training image.

The setting (the survey's own sub-field): a zoo of small models, each trained on its own few-class task,
and no data. Three routes, all here:

* **White box, PURER-style** (Hu et al., CVPR 2023, "Architecture, dataset and model-scale agnostic
  data-free meta-learning", simplified to its core: inversion, then episodic meta-training):
  invert every task model with
  DeepInversion (:func:`lfm_ref.distill.data_free.deep_inversion`), which gives a *pseudo task*, images
  the model labels as its own classes; then meta-train a ProtoNet (Snell et al., 2017) on episodes drawn
  from the pseudo tasks, one model's classes per episode (:class:`PseudoTasks`).
* **Model fusion** (Wang et al., UAI 2022, "Meta-learning without data via Wasserstein distributionally-
  robust model fusion"): combine the zoo's weights into one meta-initialisation that is robust to which
  models the zoo happens to hold. :func:`robust_fusion_weights` keeps the core of it in weight space: the
  centre ``theta`` that minimises the *worst-case* expected squared distance to a model drawn from any
  distribution within a Wasserstein ball of radius ``rho`` around the zoo's empirical distribution,
  ``min_theta sup_{W(Q, P_zoo) <= rho} E_{theta' ~ Q} ||theta - theta'||^2``, with ``Q`` supported on
  the zoo's members (so the worst case re-weights them), solved through the Wasserstein-DRO duality.
  Radius 0 gives the plain mean (:func:`fuse_zoo`'s default, the chapter's baseline "averaging the
  zoo's weights"); a large radius gives the centre of the smallest ball around the members. What the
  paper builds beyond this core is not reproduced. Models must share one initialisation, so that
  coordinates correspond without neuron matching.
* **Black box, BiDf-MKD-style** (Hu et al., ICML 2023, "Learning to learn from APIs: black-box data-free
  meta-learning"): each model is an API returning probabilities
  (:class:`lfm_ref.blackbox.ClassifierAPI`). It is inverted through queries with a zeroth-order gradient
  estimate (:func:`lfm_ref.blackbox.zeroth_order_grad`; every query counted by the API), and the meta-
  learner is trained on the inverted data: the ProtoNet loss plus the distillation of the API's answers
  into the meta-learner's prototype classifier, ``KL(p_API(x) || softmax(-||f(x) - c_k||^2))``.

The zoo (:func:`train_task_zoo`) is deterministic: TinyCNNs with BatchNorm, all from one seeded initial
state, each trained on N classes of the META-TRAIN split of :mod:`lfm_ref.data.few_shot`, the classes dealt
out so that the zoo's tasks cover the meta-train classes.

Chapter: notebooks/15_data_free_meta_learning.ipynb.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..blackbox import ClassifierAPI, zeroth_order_grad
from ..distill.data_free import deep_inversion
from ..train import fit
from ..utils import eval_mode, random_state_kept
from ..zoo.models import TinyCNN
from .episodes import Episode, EpisodeSampler, _generator, _Source
from .protonets import protonet_episode_logits


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder of a TinyCNN: its pooled features (the ProtoNet embedding), ``(B, 2 * width)``."""
    return model.features(x)


@dataclass
class TaskModel:
    """One member of the zoo: a model and the few-shot class ids of its task (its labels 0..N-1 in order)."""

    model: nn.Module
    classes: torch.Tensor


def train_task_zoo(x: torch.Tensor, y: torch.Tensor, n_models: int, n_way: int = 5,
                   width: int = 8, steps: int = 60, lr: float = 1e-2,
                   seed: int = 0) -> list[TaskModel]:
    """A zoo of ``n_models`` TinyCNNs, each trained on its own ``n_way``-way task.

    ``(x, y)``: meta-train images and class ids (``few_shot_classes("meta-train")``).
    Classes are dealt out from one seeded permutation, ``n_way`` per model (reshuffled
    when used up), so the zoo covers ``min(n_models * n_way, n_classes)`` of them.
    Every model starts from one seeded initial state (so weights can be averaged) and
    trains ``steps`` steps through ``lfm_ref.fit``.
    """
    checks.tensor(x, "x", dim=4, floating=True)
    checks.tensor(y, "y", dim=1, floating=False)
    if len(x) != len(y):
        raise ValueError("x and y must hold the same number of examples, "
                         f"got {len(x)} and {len(y)}")
    n_models = checks.positive_int(n_models, "n_models")
    n_way = checks.positive_int(n_way, "n_way")
    classes = torch.unique(y)
    if n_way < 2 or n_way > len(classes):
        raise ValueError(f"n_way must be between 2 and the {len(classes)} classes in "
                         f"y, got {n_way}")
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    # one shared start, drawn from the global stream (module initialisers take no
    # generator) inside a block that gives the caller's stream back untouched
    with random_state_kept(int(torch.randint(2**31, (1,), generator=g))):
        init = TinyCNN(n_way, checks.positive_int(width, "width"))
    order, zoo = torch.empty(0, dtype=torch.long), []
    for i in range(n_models):
        if len(order) < n_way:
            shuffled = classes[torch.randperm(len(classes), generator=g)]
            order = torch.cat([order, shuffled])
        task, order = order[:n_way], order[n_way:]
        keep = torch.isin(y, task)
        labels = (y[keep][:, None] == task[None]).long().argmax(1)  # ids -> 0..N-1
        model = copy.deepcopy(init)
        data = torch.utils.data.TensorDataset(x[keep], labels)
        fit(model, data, steps=steps, lr=lr, batch_size=64, seed=seed * 1000 + i,
            progress=False)
        zoo.append(TaskModel(model, task.clone()))
    return zoo


def fuse_zoo(models: Sequence[nn.Module],
             weights: Sequence[float] | None = None) -> nn.Module:
    """Model fusion in weight space, ``theta = sum_i w_i theta_i``: ``w`` uniform by
    default (the zoo average), or Wang et al.'s robust weights from
    :func:`robust_fusion_weights`.

    Floating parameters and buffers (BatchNorm's running statistics too) are averaged;
    integer buffers (``num_batches_tracked``) come from the first model. Returns a new
    model; the zoo is left alone.
    """
    models = checks.non_empty(models, "models")
    for m in models:
        checks.module(m, "models[i]")
    states = [m.state_dict() for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise ValueError("fusing needs models of one architecture (the same state-dict "
                         "keys)")
    if weights is None:
        w = torch.full((len(models),), 1.0 / len(models))
    else:
        w = torch.tensor([checks.number(v, "weights[i]", low=0) for v in weights])
        if len(w) != len(models) or w.sum() <= 0:
            raise ValueError(f"weights must be {len(models)} non-negative numbers, not "
                             f"all 0, got {list(weights)}")
        w = w / w.sum()
    fused = {}
    for k, t in states[0].items():
        if t.is_floating_point():  # theta = sum_i w_i theta_i
            fused[k] = sum(wi * s[k] for wi, s in zip(w.tolist(), states))
        else:
            fused[k] = t.clone()
    out = copy.deepcopy(models[0])
    out.load_state_dict(fused)
    return out


def robust_fusion_weights(models: Sequence[nn.Module], radius: float,
                          temperature: float = 1e-2, steps: int = 300) -> torch.Tensor:
    """The Wasserstein-robust centre of the zoo (Wang et al., 2022; module docstring),
    as weights ``a`` on the members, ``theta = sum_j a_j theta_j``: pass them to
    :func:`fuse_zoo`.

    ``radius`` is in units of the mean squared distance between two members (0: the
    mean). With ``c_ij = ||theta_i - theta_j||^2`` and ``L_j = ||theta - theta_j||^2``,
    the duality of Wasserstein DRO turns the worst case into one dual variable
    ``lam >= 0``:
    ``sup_Q E_Q L = min_lam lam * rho + (1/n) sum_i max_j (L_j - lam * c_ij)``,
    jointly convex in ``(theta, lam)``; the max is smoothed by ``temperature`` (a
    log-sum-exp) and the whole minimised by L-BFGS over ``a`` on the simplex and
    ``lam``.
    Only the members' Gram matrix is needed, so the cost is independent of model size.
    """
    models = checks.non_empty(models, "models")
    radius = checks.number(radius, "radius", low=0)
    temperature = checks.positive(temperature, "temperature")
    states = [checks.module(m, "models[i]").state_dict() for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise ValueError("fusing needs models of one architecture (the same state-dict "
                         "keys)")
    n = len(models)
    if radius == 0 or n == 1:
        return torch.full((n,), 1.0 / n)
    thetas = torch.stack([torch.cat([t.detach().double().flatten().cpu()
                                     for t in s.values() if t.is_floating_point()])
                          for s in states])  # (n, D)
    gram = thetas @ thetas.T  # (n, n), G_ij = <theta_i, theta_j>
    sq = gram.diagonal()
    # c_ij = ||theta_i - theta_j||^2, from differences (exact 0 for equal members)
    cost = torch.stack([(thetas - t).pow(2).sum(1) for t in thetas])  # (n, n)
    scale = cost.sum() / (n * (n - 1))  # the mean squared distance between two members
    if scale == 0:
        raise ValueError("the models are identical; their centre is any one of them")
    cost, gram, sq = cost / scale, gram / scale, sq / scale
    # a = softmax(logits) on the simplex, lam = softplus(raw_lam) >= 0
    logits = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    raw_lam = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits, raw_lam], lr=1, max_iter=steps,
                            line_search_fn="strong_wolfe")

    def dual() -> torch.Tensor:
        a, lam = logits.softmax(0), F.softplus(raw_lam)
        # L_j = ||sum_k a_k theta_k - theta_j||^2, from the Gram matrix alone
        loss_j = a @ gram @ a - 2 * gram @ a + sq
        inner = (loss_j[None] - lam * cost) / temperature  # (n, n): source i, target j
        return lam * radius + temperature * inner.logsumexp(1).mean()

    def closure():
        opt.zero_grad()
        value = dual()
        value.backward()
        return value

    opt.step(closure)
    return logits.detach().softmax(0).float()


def _check_zoo(zoo) -> list[TaskModel]:
    zoo = checks.non_empty(zoo, "zoo")
    if not all(isinstance(t, TaskModel) for t in zoo):
        raise TypeError("zoo must be a list of TaskModel (from train_task_zoo)")
    return zoo


def invert_zoo(zoo: Sequence[TaskModel], per_class: int = 8, steps: int = 40, lr: float = 0.1,
               bn_weight: float = 1.0, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """White-box inversion: one pseudo task ``(images, labels 0..N-1)`` per task model, by DeepInversion.

    ``per_class`` images of each of the model's classes, optimised as one batch so that the model assigns
    them their class and their BatchNorm statistics match the model's running ones.
    """
    zoo = _check_zoo(zoo)
    per_class = checks.positive_int(per_class, "per_class")
    tasks = []
    for i, t in enumerate(zoo):
        labels = torch.arange(len(t.classes)).repeat_interleave(per_class)
        images = deep_inversion(t.model, labels, (1, 8, 8), steps=steps, lr=lr, bn_weight=bn_weight,
                                seed=seed * 1000 + i)
        tasks.append((images.cpu(), labels))
    return tasks


def invert_api(api: ClassifierAPI, n_way: int, per_class: int = 8, steps: int = 40,
               lr: float = 0.05, directions: int = 8, eps: float = 1e-2,
               shape: tuple[int, ...] = (1, 8, 8),
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Black-box inversion: images the API labels as each of its ``n_way`` classes.

    Each image descends ``f(x) = -log p_API(y | x)`` along the zeroth-order estimate of
    its gradient (:func:`lfm_ref.blackbox.zeroth_order_grad`, ``directions + 1`` queries
    per image and step; signed steps, since the estimate's scale is noisy), clamped to
    [0, 1]. The API counts every query (``api.queries``):
    ``steps * n_way * per_class * (directions + 1)``.
    """
    if not isinstance(api, ClassifierAPI) or api.output != "probs":
        raise TypeError("api must be a lfm_ref.blackbox.ClassifierAPI answering "
                        f"probabilities (output='probs'), got {type(api).__name__}")
    n_way = checks.positive_int(n_way, "n_way")
    per_class = checks.positive_int(per_class, "per_class")
    steps, lr = checks.positive_int(steps, "steps"), checks.positive(lr, "lr")
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", minimum=0))
    labels = torch.arange(n_way).repeat_interleave(per_class)
    x = torch.rand((len(labels), *shape), generator=g)

    def f(inputs: torch.Tensor) -> torch.Tensor:  # -log p(y | x) per image
        p = api(inputs).cpu()
        if p.shape[-1] != n_way:
            raise ValueError(f"the API answers {p.shape[-1]} classes, but "
                             f"n_way={n_way} was given")
        y = labels.repeat(len(inputs) // len(labels))  # perturbed batches repeat y
        return -p.gather(1, y[:, None]).squeeze(1).clamp_min(1e-12).log()

    for _ in range(steps):
        grad = zeroth_order_grad(f, x, directions, eps, generator=g)  # ~ df/dx
        x = (x - lr * grad.sign()).clamp(0.0, 1.0)  # x <- x - lr * sign(g_hat)
    return x, labels


class PseudoTasks(_Source):
    """PURER-style episodes from pseudo tasks: each episode takes one pseudo task (one model's classes) and
    draws ``k_shot`` support and ``q_query`` query images of each of its classes; ``batch``/``loader`` as in
    :class:`lfm_ref.meta.EpisodeSampler`."""

    def __init__(self, tasks: Sequence[tuple[torch.Tensor, torch.Tensor]], k_shot: int = 1, q_query: int = 5):
        tasks = checks.non_empty(tasks, "tasks")
        ways = {int(y.max()) + 1 for _, y in tasks}
        if len(ways) != 1:
            raise ValueError(f"pseudo tasks must all have the same number of classes, got {sorted(ways)}")
        self.samplers = [EpisodeSampler(x, y, max(ways), k_shot, q_query) for x, y in tasks]

    def sample(self, generator: torch.Generator) -> Episode:
        generator = _generator(generator)
        i = int(torch.randint(len(self.samplers), (1,), generator=generator))
        return self.samplers[i].sample(generator)


def protonet_distill_objective(alpha: float = 1.0):
    """The meta-learner's loss on pseudo episodes: ProtoNet cross-entropy on the query
    plus, for batches that carry the API's probabilities (:class:`DistilledTasks`),
    BiDf-MKD's distillation ``alpha * KL(p_API(q) || p_proto(q))``. On plain Episodes
    it is the ProtoNet loss.
    """
    alpha = checks.number(alpha, "alpha", low=0)

    def objective(model: nn.Module, batch) -> torch.Tensor:
        episodes, probs = (batch, None) if isinstance(batch, Episode) else batch
        logits = protonet_episode_logits(model, episodes, features, grad=True)
        y = episodes.query_y.to(logits.device)
        loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())  # CE on the query
        if probs is not None and alpha:  # + alpha * KL(p_API || p_proto)
            log_q = logits.log_softmax(-1).flatten(0, -2)
            p = probs.to(logits.device).flatten(0, -2)
            loss = loss + alpha * F.kl_div(log_q, p, reduction="batchmean")
        return loss

    return objective


class DistilledTasks(PseudoTasks):
    """Pseudo episodes with the API's probabilities on their query images: BiDf-MKD's transfer set. The
    probabilities are queried once here (and counted by each API)."""

    def __init__(self, apis: Sequence[ClassifierAPI], tasks, k_shot: int = 1, q_query: int = 5):
        super().__init__(tasks, k_shot, q_query)
        apis = checks.non_empty(apis, "apis")
        if len(apis) != len(self.samplers):
            raise ValueError(f"one API per pseudo task: got {len(apis)} APIs and {len(self.samplers)} tasks")
        self.probs = [api(s.x).cpu() for api, s in zip(apis, self.samplers)]  # p_API on every inverted image

    def sample(self, generator):
        raise TypeError("DistilledTasks gives batches only (their probabilities travel with them)")

    def batch(self, n_tasks: int, generator: torch.Generator):
        generator = _generator(generator)
        n_tasks = checks.positive_int(n_tasks, "n_tasks")
        episodes, probs = [], []
        for _ in range(n_tasks):
            i = int(torch.randint(len(self.samplers), (1,), generator=generator))
            s = self.samplers[i]
            e = s.sample(generator)
            # the query images are rows of s.x: find them to look up their probabilities
            rows = (e.query_x.flatten(1)[:, None] == s.x.flatten(1)[None]).all(-1).float().argmax(1)
            episodes.append(e)
            probs.append(self.probs[i][rows])
        return Episode.stack(episodes), torch.stack(probs)


def meta_train(model: nn.Module, source: _Source, steps: int = 100, n_tasks: int = 4, lr: float = 3e-3,
               objective=None, seed: int = 0) -> list[float]:
    """Meta-train ``model`` (a TinyCNN whose ``features`` are the embedding) as a ProtoNet on ``source``'s
    episodes through ``lfm_ref.fit``. ``objective`` defaults to :func:`protonet_distill_objective`."""
    checks.module(model)
    steps = checks.positive_int(steps, "steps")
    objective = protonet_distill_objective() if objective is None else objective
    loader = source.loader(n_tasks, steps, seed=checks.integer(seed, "seed", minimum=0))
    return fit(model, loader, loss_fn=objective, steps=steps, lr=lr, seed=seed, progress=False)


def protonet_predict(model: nn.Module):
    """``adapt_and_predict`` for :func:`lfm_ref.meta.few_shot_accuracy`: prototypes of the support features
    (the same rule at meta-test as in meta-training), for every model compared."""
    checks.module(model)

    def predict(episode: Episode) -> torch.Tensor:
        with eval_mode(model):
            return protonet_episode_logits(model, episode, features)

    return predict
