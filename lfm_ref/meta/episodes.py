"""Episodes: the tasks of meta-learning, each a support set to adapt on and a query set to score on.

An N-way K-shot *episode* (Vinyals et al., 2016) draws N classes, K labelled support examples of each and
some query examples of the same classes; labels are renumbered 0..N-1 in every episode, so a model can only
name a class from its support examples. A regression episode is one function's support and query points
(Finn et al., 2017's sine waves). Meta-training draws episodes from meta-train classes, meta-test from held
out ones. A *batch* of episodes stacks the tensors of several tasks along a leading task dimension, so
``torch.func.vmap`` (or plain batched algebra) runs all of them as one computation.

Chapter: notebooks/14_learning_to_learn.ipynb.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .. import checks


def _is_classification(y: torch.Tensor) -> bool:
    return not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)


@dataclass(frozen=True)
class Episode:
    """The support and query sets of one task, or of a batch of tasks (a leading task dimension).

    Classification: ``support_y``/``query_y`` are integer labels 0..N-1, shape ``(n,)`` for one task and
    ``(T, n)`` for a batch; every class 0..N-1 must have a support example in every task, and the query may
    only hold those classes. Regression: ``y`` is float, ``(n, 1)`` for one task, ``(T, n, 1)`` for a batch.
    ``x`` has the matching leading dimensions. ``n_way`` is given or read off the support labels.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    n_way: int | None = None

    def __post_init__(self):
        for name in ("support_x", "support_y", "query_x", "query_y"):
            checks.tensor(getattr(self, name), name)
        sy, qy = self.support_y, self.query_y
        if _is_classification(sy) != _is_classification(qy):
            raise TypeError(f"support_y and query_y must both be integer labels or both float targets, got "
                            f"dtypes {sy.dtype} and {qy.dtype}")
        lead = 1 if _is_classification(sy) else 2  # the label dimensions of one task
        if sy.dim() not in (lead, lead + 1) or qy.dim() != sy.dim():
            want = "(n,) or (T, n)" if lead == 1 else "(n, 1) or (T, n, 1)"
            raise ValueError(f"support_y and query_y must both have shape {want}, got {tuple(sy.shape)} and "
                             f"{tuple(qy.shape)}")
        k = sy.dim() - lead + 1  # the leading dimensions x shares with y: (n,) or (T, n)
        for x, y, part in ((self.support_x, sy, "support"), (self.query_x, qy, "query")):
            if x.dim() <= k - 1 or x.shape[:k] != y.shape[:k]:
                raise ValueError(f"{part}_x must start with the {part} labels' dimensions {tuple(y.shape[:k])}, "
                                 f"got shape {tuple(x.shape)}")
        if self.batched and sy.shape[0] != qy.shape[0]:
            raise ValueError(f"support and query must hold the same number of tasks, got {sy.shape[0]} and "
                             f"{qy.shape[0]}")
        if sy.shape[-lead] == 0:
            raise ValueError("the support set is empty")
        if not _is_classification(sy):
            if self.n_way is not None:
                raise ValueError(f"a regression episode has no n_way, got n_way={self.n_way!r}")
            return
        if sy.min() < 0:
            raise ValueError(f"support labels must be 0..N-1, got a label {sy.min().item()}")
        n_way = int(sy.max()) + 1 if self.n_way is None else checks.positive_int(self.n_way, "n_way")
        if sy.max() >= n_way:
            raise ValueError(f"support labels must lie in [0, n_way={n_way}), got a label {sy.max().item()}")
        present = torch.nn.functional.one_hot(sy, n_way).sum(-2) > 0  # (N,) or (T, N)
        if not present.all():
            first = [int(i) for i in (~present).nonzero()[0]]
            task, cls = first if self.batched else (None, first[0])
            where = f" of task {task}" if task is not None else ""
            raise ValueError(f"the support set{where} has no example of class {cls} (an {n_way}-way episode needs "
                             f"every class 0..{n_way - 1} in its support)")
        if qy.numel() and (qy.min() < 0 or qy.max() >= n_way):
            raise ValueError(f"query labels must be classes of the support (0..{n_way - 1}), got labels from "
                             f"{qy.min().item()} to {qy.max().item()}: query and support disagree in classes")
        object.__setattr__(self, "n_way", n_way)

    @property
    def regression(self) -> bool:
        """Whether the targets are float (a regression task) rather than class labels."""
        return not _is_classification(self.support_y)

    @property
    def batched(self) -> bool:
        """Whether the tensors carry a leading task dimension."""
        return self.support_y.dim() == (3 if self.regression else 2)

    @property
    def n_tasks(self) -> int:
        """The number of tasks: the leading dimension of a batch, 1 for a single episode."""
        return self.support_y.shape[0] if self.batched else 1

    @property
    def support(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.support_x, self.support_y

    @property
    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_x, self.query_y

    def to(self, device) -> "Episode":
        """The episode on ``device`` (itself if it is there already)."""
        device = torch.device(device)
        if self.support_x.device == device:
            return self
        return Episode(*(t.to(device, non_blocking=True) for t in
                         (self.support_x, self.support_y, self.query_x, self.query_y)), n_way=self.n_way)

    def task(self, i: int) -> "Episode":
        """Task ``i`` of a batch, as a single episode."""
        if not self.batched:
            raise ValueError("task(i) needs a batch of episodes; this episode has no task dimension")
        i = checks.int_between(i, "i", 0, self.n_tasks - 1, "the number of tasks - 1")
        return Episode(self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i], n_way=self.n_way)

    @staticmethod
    def stack(episodes: Sequence["Episode"]) -> "Episode":
        """One batch of single episodes of equal shapes (and equal ``n_way``)."""
        episodes = checks.non_empty(episodes, "episodes")
        if not all(isinstance(e, Episode) and not e.batched for e in episodes):
            raise TypeError("Episode.stack expects a list of single (unbatched) Episodes")
        shapes = {tuple(tuple(getattr(e, f).shape) for f in ("support_x", "query_x")) for e in episodes}
        if len(shapes) != 1 or len({e.n_way for e in episodes}) != 1:
            raise ValueError("Episode.stack needs episodes of equal shapes and n_way, got shapes "
                             f"{sorted(shapes)} and n_way {sorted({str(e.n_way) for e in episodes})}")
        fields = ("support_x", "support_y", "query_x", "query_y")
        return Episode(*(torch.stack([getattr(e, f) for e in episodes]) for f in fields), n_way=episodes[0].n_way)


class _Batches(Dataset):
    """``n_batches`` batches of episodes, batch ``i`` drawn from its own seed: the same on every pass."""

    def __init__(self, source, n_tasks: int, n_batches: int, seed: int):
        self.source, self.n_tasks, self.n_batches, self.seed = source, n_tasks, n_batches, seed

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> Episode:
        return self.source.batch(self.n_tasks, torch.Generator().manual_seed(self.seed * 1_000_003 + i))


class _Source:
    """What the two samplers share: batches of episodes, and a loader of batches for ``lfm_ref.fit``."""

    def sample(self, generator: torch.Generator) -> Episode:  # pragma: no cover - overridden
        raise NotImplementedError

    def batch(self, n_tasks: int, generator: torch.Generator) -> Episode:
        """``n_tasks`` episodes stacked along a leading task dimension."""
        n_tasks = checks.positive_int(n_tasks, "n_tasks")
        return Episode.stack([self.sample(generator) for _ in range(n_tasks)])

    def loader(self, n_tasks: int, n_batches: int, seed: int = 0) -> DataLoader:
        """A loader of ``n_batches`` batches of ``n_tasks`` episodes each, for ``lfm_ref.fit(model, loader,
        loss_fn=..., epochs=...)``: a meta-loss is a ``loss_fn(model, batch_of_episodes)``. Batch ``i`` is
        drawn from seed ``(seed, i)``, so every epoch sees the same tasks in the same order."""
        n_tasks = checks.positive_int(n_tasks, "n_tasks")
        n_batches = checks.positive_int(n_batches, "n_batches")
        seed = checks.integer(seed, "seed", minimum=0)
        # batch_size=None: the dataset's items are whole batches already, handed over as they are
        return DataLoader(_Batches(self, n_tasks, n_batches, seed), batch_size=None, shuffle=False)


def _generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (torch.Generator().manual_seed(seed)), got "
                        f"{type(generator).__name__}")
    return generator


class EpisodeSampler(_Source):
    """N-way K-shot episodes over the labelled examples ``(x, y)``: N of the classes present in ``y``, K
    support and ``q_query`` query examples of each, drawn without replacement; labels renumbered 0..N-1 in
    the random order the classes were drawn. Give it meta-train classes to meta-train, held-out classes to
    meta-test (:func:`lfm_ref.data.few_shot.few_shot_classes`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_way: int, k_shot: int, q_query: int = 15):
        checks.tensor(x, "x")
        checks.tensor(y, "y", dim=1, floating=False)
        if len(x) != len(y):
            raise ValueError(f"x and y must hold the same number of examples, got {len(x)} and {len(y)}")
        self.n_way = checks.positive_int(n_way, "n_way")
        self.k_shot = checks.positive_int(k_shot, "k_shot")
        self.q_query = checks.integer(q_query, "q_query", minimum=0)
        self.x, self.y = x, y
        self.classes, counts = torch.unique(y, return_counts=True)
        if self.n_way > len(self.classes):
            raise ValueError(f"n_way={self.n_way} is more than the {len(self.classes)} classes in y")
        need = self.k_shot + self.q_query
        if counts.min() < need:
            c = int(counts.argmin())
            raise ValueError(f"k_shot + q_query = {self.k_shot} + {self.q_query} = {need} is more than the "
                             f"{int(counts[c])} examples of class {int(self.classes[c])}")
        self.index = [torch.nonzero(y == c).flatten() for c in self.classes]  # the examples of each class

    def sample(self, generator: torch.Generator) -> Episode:
        """One episode; support sorted by label, query too (order is irrelevant to every method here)."""
        generator = _generator(generator)
        chosen = torch.randperm(len(self.classes), generator=generator)[: self.n_way]
        k, support, query = self.k_shot, [], []
        for c in chosen.tolist():
            idx = self.index[c][torch.randperm(len(self.index[c]), generator=generator)[: k + self.q_query]]
            support.append(idx[:k])
            query.append(idx[k:])
        s, q = torch.cat(support), torch.cat(query)
        labels = torch.arange(self.n_way)
        return Episode(self.x[s], labels.repeat_interleave(k), self.x[q], labels.repeat_interleave(self.q_query),
                       n_way=self.n_way)


class SinusoidTasks(_Source):
    """Finn et al. (2017, Sec. 5.1)'s regression tasks: ``y = A sin(x - phase)`` with the amplitude
    ``A ~ U[0.1, 5]``, the phase ``~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; K support points and
    ``q_query`` query points of each sine (Finn et al. meta-train on K query points too)."""

    def __init__(self, k_shot: int = 10, q_query: int | None = None, amplitude=(0.1, 5.0),
                 phase=(0.0, math.pi), x_range=(-5.0, 5.0)):
        self.k_shot = checks.positive_int(k_shot, "k_shot")
        self.q_query = self.k_shot if q_query is None else checks.positive_int(q_query, "q_query")
        self.amplitude, self.phase, self.x_range = (self._interval(v, n) for v, n in
                                                    ((amplitude, "amplitude"), (phase, "phase"),
                                                     (x_range, "x_range")))

    @staticmethod
    def _interval(value, name: str) -> tuple[float, float]:
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(f"{name} must be a (low, high) pair, got {value!r}")
        low, high = (checks.number(v, name) for v in value)
        if not low < high:
            raise ValueError(f"{name} must be (low, high) with low < high, got {value!r}")
        return low, high

    def _uniform(self, interval, n: int, generator) -> torch.Tensor:
        low, high = interval
        return low + (high - low) * torch.rand(n, generator=generator)

    def draw(self, n_tasks: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The amplitudes and phases of ``n_tasks`` sines."""
        generator = _generator(generator)
        n_tasks = checks.positive_int(n_tasks, "n_tasks")
        return self._uniform(self.amplitude, n_tasks, generator), self._uniform(self.phase, n_tasks, generator)

    def episodes(self, amplitude: torch.Tensor, phase: torch.Tensor, generator: torch.Generator) -> Episode:
        """A batch of episodes of the given sines (one per amplitude/phase), inputs drawn from ``x_range``."""
        generator = _generator(generator)
        checks.tensor(amplitude, "amplitude", dim=1, floating=True)
        checks.same_shape(phase, amplitude, "phase", "amplitude")
        t, n = len(amplitude), self.k_shot + self.q_query
        x = self._uniform(self.x_range, t * n, generator).reshape(t, n, 1)
        y = amplitude[:, None, None] * torch.sin(x - phase[:, None, None])  # y = A sin(x - phase)
        k = self.k_shot
        return Episode(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def batch(self, n_tasks: int, generator: torch.Generator) -> Episode:
        return self.episodes(*self.draw(n_tasks, generator), generator)

    def sample(self, generator: torch.Generator) -> Episode:
        return self.batch(1, generator).task(0)
