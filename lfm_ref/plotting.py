"""The few plots every chapter needs: training curves, image grids and the survey's taxonomy.

Chapter: notebooks/00_foundation_models.ipynb (first used there; results over seeds are drawn by
``lfm_ref.book.seed_bars``).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import checks

# The taxonomy of Zheng et al., "Learning from models beyond fine-tuning" (Nat. Mach. Intell., 2025).
TAXONOMY: dict[str, tuple[str, ...]] = {
    "Model tuning": ("Weight engineering", "Input engineering", "Database augmentation"),
    "Model distillation": ("Distillation with data", "Data-free: noise optimisation",
                           "Data-free: generative reconstruction", "Data-free: adversarial exploration"),
    "Model reuse": ("Ensembles", "Weight interpolation / merging", "Mode connectivity", "Merging with experts"),
    "Meta-learning": ("Learning to learn", "Data-free, white-box", "Data-free, black-box"),
    "Model editing": ("Memory-based", "Constrained tuning", "Locate and edit", "Meta-learned editors"),
}


def plot_history(losses: Sequence[float], ax=None, window: int = 20, label: str | None = None, **kwargs):
    """Loss per step (faint) and its moving average over ``window`` steps."""
    if isinstance(losses, (str, bytes)) or not hasattr(losses, "__len__"):
        raise TypeError(f"losses must be a list of numbers (one per step), got {type(losses).__name__}")
    if len(losses) == 0:
        raise ValueError("losses is empty: nothing to plot")
    window = checks.positive_int(window, "window")
    ax = ax or plt.subplots(figsize=(5, 3))[1]
    losses = np.asarray(losses, dtype=float)
    line = ax.plot(losses, alpha=0.25, **kwargs)[0]
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(losses)), smooth, color=line.get_color(), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if label:
        ax.legend()
    return ax


def show_images(images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.0):
    """A grid of single-channel images ``(N, 1, H, W)`` or ``(N, H, W)``; returns the figure."""
    images = torch.as_tensor(images).detach().cpu()
    if images.dim() == 4:
        if images.shape[1] != 1:
            raise ValueError(f"show_images expects one channel, got shape {tuple(images.shape)}")
        images = images[:, 0]
    if images.dim() != 3:
        raise ValueError(f"show_images expects (N, 1, H, W) or (N, H, W), got shape {tuple(images.shape)}")
    ncols = checks.positive_int(ncols, "ncols")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].numpy(), cmap="gray_r", vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig


def taxonomy_figure(taxonomy: dict[str, Sequence[str]] = TAXONOMY):
    """The survey's taxonomy as a tree: Learn From Model -> five paradigms -> their families."""
    if not taxonomy:
        raise ValueError("taxonomy is empty")
    fig, ax = plt.subplots(figsize=(11, 4.6))
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(0.15, 1)
    box = dict(boxstyle="round,pad=0.4", linewidth=1)
    colors = plt.get_cmap("tab10").colors
    root = (0.5, 0.93)
    ax.text(*root, "Learn From Model (LFM)", ha="center", va="center", fontsize=13, weight="bold",
            bbox={**box, "facecolor": "#eeeeee"})
    n = len(taxonomy)
    for i, (paradigm, families) in enumerate(taxonomy.items()):
        x = (i + 0.5) / n
        ax.annotate("", xy=(x, 0.78), xytext=(root[0], root[1] - 0.04),
                    arrowprops=dict(arrowstyle="-", color="gray"))
        ax.text(x, 0.75, paradigm, ha="center", va="center", fontsize=10.5, weight="bold",
                bbox={**box, "facecolor": colors[i % 10], "alpha": 0.35})
        for j, family in enumerate(families):
            y = 0.6 - j * 0.13
            ax.annotate("", xy=(x, y + 0.035), xytext=(x, 0.71 if j == 0 else y + 0.095),
                        arrowprops=dict(arrowstyle="-", color="lightgray"))
            ax.text(x, y, family.replace(": ", ":\n").replace(" / ", " /\n"), ha="center", va="center",
                    fontsize=8.5, bbox={**box, "facecolor": "white", "edgecolor": colors[i % 10]})
    fig.tight_layout()
    return fig
