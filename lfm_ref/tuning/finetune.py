"""Which weights to fine-tune: full fine-tuning, linear probing, partial (last-k blocks) tuning, BitFit,
LP-FT and WiSE-FT. All of them are the ordinary training loop with a choice of trainable parameters,
or a combination of two trained models.

- **Linear probing** trains only the head on frozen features; **full fine-tuning** trains everything.
- **Partial tuning** trains the last ``k`` blocks and the head (Yosinski et al., 2014).
- **BitFit** (Ben Zaken et al., 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
  Transformer-based Masked Language-models", ACL; arXiv:2106.10199) trains only the bias terms (and the head).
- **LP-FT** (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
  Out-of-Distribution", ICLR; arXiv:2202.10054): linear probing first, then full fine-tuning from that head,
  so that a random head's large early gradients do not distort the pretrained features.
- **WiSE-FT** (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models", CVPR; arXiv:2109.01903):
  the weight-space interpolation ``theta_alpha = (1 - alpha) theta_0 + alpha theta_ft`` between the
  zero-shot (here: linearly probed) and the fine-tuned model: ``lfm_ref.state_dicts.interpolate``
  restricted to ``alpha`` in ``[0, 1]`` (chapter 12 walks the same line past both ends).

Chapter: notebooks/01_finetuning.ipynb.
"""
from __future__ import annotations

from torch import nn

from .. import checks
from ..hooks import get_module
from ..state_dicts import StateDict, interpolate
from ..train import fit

MODES = ("full", "linear_probe", "last_k", "bitfit")


def select_trainable(model: nn.Module, mode: str = "full", k: int = 1,
                     head: str = "head", blocks: str = "blocks") -> nn.Module:
    """Set ``requires_grad`` for a fine-tuning ``mode`` (in place) and return ``model``.

    ``"full"``: every parameter; ``"linear_probe"``: the ``head`` module only;
    ``"last_k"``: the last ``k`` of the ``blocks`` (a module list) and the head;
    ``"bitfit"``: every bias and the head. The head always trains: a new task needs its
    own output layer.
    """
    checks.module(model)
    checks.choice(mode, "mode", MODES)
    head_module = get_module(model, head)
    model.requires_grad_(mode == "full")
    if mode == "last_k":
        stack = get_module(model, blocks)
        if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f"{blocks!r} must name an nn.ModuleList or nn.Sequential "
                            f"of blocks, got {type(stack).__name__}")
        k = checks.int_between(k, "k", 1, len(stack), "the number of blocks")
        for block in list(stack)[-k:]:
            block.requires_grad_(True)
    elif mode == "bitfit":
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
    head_module.requires_grad_(True)
    return model


def lp_ft(model: nn.Module, data, *, lp_steps: int, ft_steps: int, lp_lr: float,
          ft_lr: float, head: str = "head", **fit_kwargs
          ) -> tuple[list[float], list[float]]:
    """LP-FT (Kumar et al., 2022): fit the head on frozen features, then fine-tune
    everything from it (the paper's second stage uses a small ``ft_lr``). Returns both
    stages' losses; ``fit_kwargs`` go to both calls of :func:`lfm_ref.fit`."""
    select_trainable(model, "linear_probe", head=head)
    probe_losses = fit(model, data, steps=lp_steps, lr=lp_lr, **fit_kwargs)
    select_trainable(model, "full", head=head)
    return probe_losses, fit(model, data, steps=ft_steps, lr=ft_lr, **fit_kwargs)


def wise_ft(zero_shot: StateDict, finetuned: StateDict, alpha: float) -> dict:
    """WiSE-FT for state dicts (alpha = 0: zero-shot, 1: fine-tuned); alpha must lie in
    ``[0, 1]``, the segment between the two models."""
    alpha = checks.probability(alpha, "alpha")
    # theta_alpha = (1 - alpha) theta_0 + alpha theta_ft
    return interpolate(zero_shot, finetuned, alpha)
