"""The notebook kit: what every chapter needs around its method, written once.

A chapter holds only what is special to it; the scaffolding of an experiment lives here, as d2l's
``d2l.Timer`` and ``d2l.plot`` do for *Dive into Deep Learning*:

- :func:`show`: a library function's live source, syntax-highlighted, with the file and lines it comes
  from (never a copy: it reads the installed module);
- :func:`seed_table` and :func:`seed_bars`: results over seeds as mean +- std, printed and drawn with one
  dot per seed, so every chapter reports spread the same way;
- :func:`seconds_per_call`: a wall-clock timer for inference cost;
- :func:`evaluate_state_dict`: the accuracy of a state dict, loaded into a probe model, on one or
  several tasks (merging, soups, mode connectivity);
- :func:`val_report_split`: halves of a test set, one to choose hyper-parameters on, one to report.
"""
from __future__ import annotations

import html
import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import checks
from .train import evaluate

__all__ = ["Source", "evaluate_state_dict", "seconds_per_call", "seed_bars", "seed_table", "show",
           "split_in_halves", "val_report_split"]


# ----- showing code ----------------------------------------------------------------------------
class Source:
    """A function's or class's source with where it lives; rendered highlighted in Jupyter and the book."""

    def __init__(self, obj):
        obj = inspect.unwrap(obj)  # a decorated function (@torch.no_grad()) is shown where it is written
        self.obj = obj
        self.text = inspect.getsource(obj)
        lines, first = inspect.getsourcelines(obj)
        module = inspect.getmodule(obj)
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
        path = inspect.getsourcefile(obj) or "?"
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.abspath(path).startswith(package_root + os.sep):
            path = os.path.relpath(path, package_root)
        self.where = (f"{module.__name__ if module else '?'}.{name}: {path}, "
                      f"lines {first}-{first + len(lines) - 1}")

    def __repr__(self) -> str:
        return f"# {self.where}\n{self.text}"

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        # inline styles (noclasses): the colours survive in the HTML book without a stylesheet
        code = highlight(self.text, PythonLexer(), HtmlFormatter(noclasses=True, nobackground=True))
        caption = f'<p style="font-size:85%;color:#555;margin:0">{html.escape(self.where)}</p>'
        return caption + code


def show(obj) -> Source:
    """Display ``obj``'s live source (as ``print(inspect.getsource(obj))`` would), highlighted, with the
    module, file and line numbers it comes from. Use it as a cell's last expression."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        raise TypeError(f"show() displays a function, method or class, got {type(obj).__name__}")
    return Source(obj)


# ----- results over seeds ----------------------------------------------------------------------
def _as_runs(results: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
    if not isinstance(results, Mapping) or len(results) == 0:
        raise TypeError(f"results must be a non-empty dict {{method: [value per seed]}}, got {results!r:.60}")
    runs = {}
    for name, values in results.items():
        array = np.asarray(values, dtype=float)
        if array.ndim not in (1, 2) or len(array) == 0:
            raise ValueError(f"results[{name!r}] must hold one value (or one row of values) per seed, "
                             f"got shape {array.shape}")
        runs[name] = array
    return runs


def seed_table(results: Mapping[str, Sequence], columns: Sequence[str] | None = None, fmt: str = "{:.1%}",
               label: str = "method", extra: Mapping[str, Mapping[str, object]] | None = None
               ) -> dict[str, tuple]:
    """Print ``method  mean +- std  per seed`` for ``results = {method: [value per seed]}`` and return
    ``{method: (mean, std)}`` (population std, NumPy's default).

    With ``columns``, each seed's value is a row (e.g. in- and out-of-distribution accuracy) and each
    column gets its own mean +- std. ``extra`` adds columns shown as given, e.g. ``{"trained": counts}``.
    """
    runs = _as_runs(results)
    width = max(len(label), *(len(name) for name in runs))
    seeds = {len(v) for v in runs.values()}
    n_seeds = f"{seeds.pop()} seeds" if len(seeds) == 1 else "seeds"
    titles = list(columns) if columns is not None else [f"mean ± std ({n_seeds})"]
    extra = dict(extra or {})
    cells = {name: [_format_extra(extra[t][name]) for t in extra] for name in runs}
    summary = {}
    for name, values in runs.items():
        mean, std = values.mean(0), values.std(0)
        if columns is not None and (values.ndim != 2 or values.shape[1] != len(titles)):
            raise ValueError(f"results[{name!r}] must have one row of {len(titles)} values per seed, "
                             f"got shape {values.shape}")
        pairs = zip(np.atleast_1d(mean), np.atleast_1d(std))
        cells[name] += [f"{fmt.format(m)} ± {fmt.format(s)}" for m, s in pairs]
        if columns is None:
            cells[name].append(" ".join(fmt.format(v) for v in values))
        summary[name] = (float(mean), float(std)) if columns is None else (mean, std)
    header = [*extra, *titles] + ([] if columns is not None else ["per seed"])
    widths = [max(len(h), *(len(cells[n][i]) for n in runs)) for i, h in enumerate(header)]
    print(f"{label:<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for name in runs:
        print(f"{name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells[name], widths)))
    return summary


def _format_extra(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return f"{value:.2f}"


def seed_bars(results: Mapping[str, Sequence], ax=None, horizontal: bool = False, color="lightsteelblue",
              ylabel: str | None = None):
    """Bars of the mean over seeds with +- std error bars and one dot per seed; returns the axes."""
    import matplotlib.pyplot as plt

    runs = _as_runs(results)
    if any(v.ndim != 1 for v in runs.values()):
        raise ValueError("seed_bars draws one value per seed; pass one column of a multi-column result")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    names, positions = list(runs), np.arange(len(runs))
    means, stds = [runs[n].mean() for n in names], [runs[n].std() for n in names]
    bar = ax.barh if horizontal else ax.bar
    bar(positions, means, **{"xerr" if horizontal else "yerr": stds}, color=color, capsize=4)
    for i, name in enumerate(names):
        dots = (runs[name], [i] * len(runs[name])) if horizontal else ([i] * len(runs[name]), runs[name])
        ax.scatter(*dots, color="navy", s=12, zorder=3)
    (ax.set_yticks if horizontal else ax.set_xticks)(positions, names)
    if ylabel:
        (ax.set_xlabel if horizontal else ax.set_ylabel)(ylabel)
    return ax


# ----- cost ------------------------------------------------------------------------------------
def seconds_per_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Mean wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, without autograd."""
    if not callable(fn):
        raise TypeError(f"fn must be a function of no arguments, got {type(fn).__name__}")
    repeats, warmup = checks.positive_int(repeats, "repeats"), checks.integer(warmup, "warmup", minimum=0)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
    return (time.perf_counter() - start) / repeats


# ----- evaluating weights ------------------------------------------------------------------------
def evaluate_state_dict(probe: nn.Module, state_dict: Mapping[str, torch.Tensor], data, **kwargs):
    """Accuracy of ``state_dict`` loaded into ``probe`` (a model of the same architecture whose weights
    are overwritten) on ``data``: an ``(x, y)`` pair gives a float, a dict ``{task: (x, y)}`` gives an
    array in the dict's order. ``kwargs`` go to :func:`lfm_ref.evaluate`."""
    checks.module(probe, "probe")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a state dict (model.state_dict()), got {type(state_dict).__name__}")
    probe.load_state_dict(state_dict)
    if isinstance(data, Mapping):
        return np.array([evaluate(probe, split, **kwargs) for split in data.values()])
    return evaluate(probe, data, **kwargs)


def val_report_split(data, seed: int = 0):
    """Two halves of ``(x, y)`` (or of each ``{task: (x, y)}``) in a seeded random order: a validation
    half to choose hyper-parameters on and a report half that the choice never sees."""
    if isinstance(data, Mapping):
        halves = {task: val_report_split(split, seed) for task, split in data.items()}
        return {t: h[0] for t, h in halves.items()}, {t: h[1] for t, h in halves.items()}
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"data must be an (x, y) pair or a dict of them, got {type(data).__name__}")
    x, y = data
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(checks.integer(seed, "seed", 0)))
    half = len(x) // 2
    return (x[order[:half]], y[order[:half]]), (x[order[half:]], y[order[half:]])


def split_in_halves(items: Sequence, seed: int = 0) -> tuple[list, list]:
    """A seeded random half of ``items`` and the other half (e.g. the fact world's instructions: train
    on one half of the facts, test on facts never seen in that format)."""
    items = checks.non_empty(items, "items")
    import random

    order = random.Random(checks.integer(seed, "seed", 0)).sample(range(len(items)), len(items))
    half = len(items) // 2
    return [items[i] for i in order[:half]], [items[i] for i in order[half:]]


# ----- fine-tunes from one start ---------------------------------------------------------------
def fine_tuned_copy(model: nn.Module, data, **fit_kwargs) -> dict[str, torch.Tensor]:
    """The weights of a copy of ``model`` after ``lfm_ref.fit(copy, data, **fit_kwargs)``; ``model``
    itself does not change, so several fine-tunes share it as their start (the inputs of merging,
    soups and paths between models)."""
    import copy

    from .state_dicts import snapshot
    from .train import fit

    tuned = copy.deepcopy(checks.module(model))
    fit(tuned, data, **fit_kwargs)
    return snapshot(tuned)
