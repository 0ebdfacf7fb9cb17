"""Merge time of ``lfm_ref.reuse`` against PEFT's merge utilities and mergekit on GPT-2-sized state dicts.

A report, not a test: machines are noisy. Both sides start from the same state dicts (a randomly
initialised GPT-2 small, 124M parameters, and fine-tuned copies made by adding noise) and return the
merged state dict; PEFT's functions and mergekit's ``merge_group`` work on one tensor at a time, so their
side loops over the keys (mergekit is skipped if it is not installed).
Run: ``python scripts/bench_merging.py [--models 3] [--repeats 3] [--small]``.
"""
from __future__ import annotations

import argparse
import time

import torch


def state_dicts(n_models: int, small: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=128, n_head=2, vocab_size=1000) if small else GPT2Config()
    pretrained = {k: v.detach().clone() for k, v in GPT2LMHeadModel(config).state_dict().items()}
    finetuned = [{k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in pretrained.items()}
                 for _ in range(n_models)]
    return pretrained, finetuned


def best_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(argv=None):
    from peft.utils import merge_utils

    from lfm_ref.reuse import dare_merge, task_arithmetic, ties_merge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a 2-layer GPT-2 instead of GPT-2 small (a quick check)")
    args = parser.parse_args(argv)
    pre, fts = state_dicts(args.models, args.small)
    n = sum(v.numel() for v in pre.values())
    weights = torch.ones(len(fts))

    def peft(fn, scale=1.0, **kw):
        def run():
            return {k: pre[k] + scale * fn([sd[k] - pre[k] for sd in fts], weights, **kw) if pre[k].is_floating_point()
                    else pre[k] for k in pre}
        return run

    try:
        from mergekit.merge_methods import registry
        from mergekit.merge_methods.base import TensorGroup
    except ImportError:
        registry = None

    def mergekit(method, **params):
        if registry is None:
            return None
        ids = range(1, len(fts) + 1)
        method = registry.get(method)
        params = {"int8_mask": False, "lambda": 1.0, "normalize": method.default_normalize,
                  "rescale": method.default_rescale, "weight": {i: 1.0 for i in ids}, "density": {i: 1.0 for i in ids},
                  **params}

        def run():
            return {k: method.merge_group(TensorGroup.from_tensors([pre[k], *(sd[k] for sd in fts)], base_index=0), **params)
                    if pre[k].is_floating_point() else pre[k] for k in pre}
        return run

    ids = range(1, len(fts) + 1)
    cases = {
        "task arithmetic": (lambda: task_arithmetic(pre, fts, lam=1.0), peft(merge_utils.task_arithmetic),
                            mergekit("task_arithmetic")),
        "TIES (per tensor, k=20%)": (lambda: ties_merge(pre, fts, density=0.2, lam=1.0, scope="tensor"),
                                      peft(merge_utils.ties, density=0.2),
                                      mergekit("ties", density={i: 0.2 for i in ids})),
        "DARE p=0.9 + TA": (lambda: dare_merge(pre, fts, p=0.9, lam=1.0, seed=0), peft(merge_utils.dare_linear, density=0.1),
                            mergekit("dare_linear", density={i: 0.1 for i in ids})),
    }
    print(f"{len(fts)} models of {n / 1e6:.1f}M parameters; best of {args.repeats} runs; torch threads {torch.get_num_threads()}")
    print(f"{'method':>26} {'lfm_ref s':>10} {'PEFT s':>8} {'ratio':>6} {'mergekit s':>10} {'ratio':>6}  equal (PEFT, mergekit)")
    for name, (ours_fn, peft_fn, mergekit_fn) in cases.items():
        t_ours, ours = best_time(ours_fn, args.repeats)
        row = f"{name:>26} {t_ours:10.2f}"
        equal = []
        for fn in (peft_fn, mergekit_fn):
            if fn is None:
                row += f" {'-':>8} {'-':>6}"
                continue
            t, theirs = best_time(fn, args.repeats)
            row += f" {t:8.2f} {t_ours / t:6.2f}"
            # DARE draws its masks in another order (and mergekit rescales by the L1 norm): times only. TIES can
            # differ in an entry where two magnitudes tie exactly at the cut (PEFT and we keep one, mergekit the other)
            equal.append("-" if name.startswith("DARE") else all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in pre))
        print(row + f"  {equal}")


if __name__ == "__main__":
    main()
