"""Merge time of ``lfm_ref.reuse`` on GPT-2-sized state dicts: TIES and DARE against task arithmetic.

A report, not a test: machines are noisy. A merge reads every input tensor once and writes the output
once, so its floor is ``bytes moved / memory bandwidth``; the bandwidth is measured here with a plain
tensor copy. Every method runs on the same inputs (a randomly initialised GPT-2 small, 124M parameters,
163M entries with the tied output layer, and fine-tuned copies made by adding noise), interleaved and
repeated, and the table gives the median and the best time, their ratios to task arithmetic's and the
best time's ratio to the floor. The
targets of issue 13: TIES (either scope) within 5x of task arithmetic, DARE within 3x. DARE's masks are
the ``torch.bernoulli`` draws of the CPU generator (one seed, one mask on every device), a serial
stream: the "RNG" line times drawing them alone. ``--peers`` adds PEFT's merge utilities and mergekit's
``merge_group`` on the same inputs (their side loops over the keys) and checks the results are equal.
Run: ``python scripts/bench_merging.py [--models 3] [--repeats 3] [--small] [--peers]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def state_dicts(n_models: int, small: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=128, n_head=2, vocab_size=1000) if small else GPT2Config()
    pretrained = {k: v.detach().clone() for k, v in GPT2LMHeadModel(config).state_dict().items()}
    finetuned = [{k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                  for k, v in pretrained.items()} for _ in range(n_models)]
    return pretrained, finetuned


def copy_bandwidth(repeats: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` on 256 MB (read + write)."""
    src = torch.randn(2**26)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peer_cases(pre, fts):
    """PEFT's and mergekit's versions of the same merges (or None where a peer is not installed)."""
    try:
        from peft.utils import merge_utils
    except ImportError:
        merge_utils = None
    try:
        from mergekit.merge_methods import registry
        from mergekit.merge_methods.base import TensorGroup
    except ImportError:
        registry = None
    weights, ids = torch.ones(len(fts)), range(1, len(fts) + 1)

    def peft(name, **kw):
        if merge_utils is None:
            return None
        fn = getattr(merge_utils, name)
        return lambda: {k: pre[k] + fn([sd[k] - pre[k] for sd in fts], weights, **kw)
                        if pre[k].is_floating_point() else pre[k] for k in pre}

    def mergekit(name, **params):
        if registry is None:
            return None
        method = registry.get(name)
        params = {"int8_mask": False, "lambda": 1.0, "normalize": method.default_normalize,
                  "rescale": method.default_rescale, "weight": {i: 1.0 for i in ids},
                  "density": {i: 1.0 for i in ids}, **params}
        group = lambda k: TensorGroup.from_tensors([pre[k], *(sd[k] for sd in fts)], base_index=0)  # noqa: E731
        return lambda: {k: method.merge_group(group(k), **params) if pre[k].is_floating_point() else pre[k]
                        for k in pre}

    return {"task arithmetic": (peft("task_arithmetic"), mergekit("task_arithmetic")),
            "TIES, per tensor": (peft("ties", density=0.2), mergekit("ties", density={i: 0.2 for i in ids}))}


def main(argv=None):
    from lfm_ref.reuse import dare_merge, task_arithmetic, ties_merge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a 2-layer GPT-2 instead of GPT-2 small")
    parser.add_argument("--peers", action="store_true", help="also time PEFT and mergekit (slow)")
    args = parser.parse_args(argv)
    pre, fts = state_dicts(args.models, args.small)
    weights = [k for k, v in pre.items() if v.is_floating_point()]
    n = sum(pre[k].numel() for k in weights)
    moved = (len(fts) + 2) * sum(pre[k].numel() * pre[k].element_size() for k in weights)  # read T+1, write 1
    bandwidth = copy_bandwidth()
    floor = moved / bandwidth
    cases = {
        "task arithmetic": lambda: task_arithmetic(pre, fts, lam=1.0),
        "TIES, per tensor (k=20%)": lambda: ties_merge(pre, fts, density=0.2, lam=1.0, scope="tensor"),
        "TIES, model scope (k=20%)": lambda: ties_merge(pre, fts, density=0.2, lam=1.0, scope="model"),
        "DARE p=0.9 + TA": lambda: dare_merge(pre, fts, p=0.9, lam=1.0, seed=0),
        # the draws behind DARE's masks (one 24-bit integer per entry, as torch.bernoulli draws)
        "RNG: DARE's masks alone": lambda: [torch.randint(0, 2**24, (len(fts), pre[k].numel()),
                                                          generator=generator, dtype=torch.int32)
                                            for k in weights],
    }
    generator = torch.Generator().manual_seed(0)
    times = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so that a noisy neighbour slows every method alike
        for name, fn in cases.items():
            times[name].append(_seconds(fn))
    print(f"{len(fts)} models of {n / 1e6:.1f}M entries; {args.repeats} interleaved runs each; "
          f"torch threads {torch.get_num_threads()}")
    print(f"bytes moved by a merge (read {len(fts) + 1}, write 1): {moved / 1e9:.2f} GB; copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s; floor {floor:.2f} s")
    median = {name: float(np.median(runs)) for name, runs in times.items()}
    base, best_base = median["task arithmetic"], min(times["task arithmetic"])
    print(f"{'method':>28} {'median s':>8} {'x TA':>6} {'best s':>7} {'x TA':>6} {'x floor':>8}   runs")
    for name, runs in times.items():
        print(f"{name:>28} {median[name]:8.2f} {median[name] / base:6.2f} {min(runs):7.2f} "
              f"{min(runs) / best_base:6.2f} {min(runs) / floor:8.2f}   {' '.join(f'{t:.2f}' for t in runs)}")
    print("targets: TIES <= 5x task arithmetic, DARE <= 3x (ratios of medians, and of best runs)")
    if args.peers:
        ta = cases["task arithmetic"]()
        # each peer against our merge with its rounding of TIES's k% (see ties_merge's docstring)
        ours = {("task arithmetic", "PEFT"): ta, ("task arithmetic", "mergekit"): ta,
                ("TIES, per tensor", "PEFT"): ties_merge(pre, fts, density=0.2, lam=1.0, scope="tensor",
                                                          rounding="floor"),
                ("TIES, per tensor", "mergekit"): cases["TIES, per tensor (k=20%)"]()}
        for name, (peft_fn, mergekit_fn) in peer_cases(pre, fts).items():
            for peer, fn in (("PEFT", peft_fn), ("mergekit", mergekit_fn)):
                if fn is None:
                    continue
                seconds = _seconds(fn)
                theirs = fn()
                # TIES can differ where two magnitudes tie exactly at the cut: we keep every tied entry (the
                # reference code's >=), PEFT's topk and mergekit's argsort keep exactly k, breaking ties by position
                equal = all(torch.allclose(ours[name, peer][k], theirs[k], atol=1e-5) for k in pre)
                print(f"{peer:>10} {name:>18}: {seconds:6.2f} s ({seconds / base:.2f}x our task arithmetic); "
                      f"equal to ours: {equal}")


if __name__ == "__main__":
    main()
