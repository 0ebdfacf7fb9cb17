"""Training-step time of lfm_ref's parameter-efficient methods against PEFT's, on a GPT-2-shaped model
(a report, not a test).

    python scripts/bench_peft.py [--method lora|ia3|prompt|prefix|all]
        [--layers 6 --width 384 --seq 128 --batch 8 --steps 20]

Both libraries get the same model, targets and batch (LoRA: c_attn, c_proj and c_fc with the same rank;
(IA)^3: c_attn and the MLP's c_proj; prompt and prefix tuning: 16 virtual tokens); the time is the median of
forward + backward + AdamW step over
``--steps`` steps, after two warm-up steps, alternating the two libraries.
"""
import argparse
import copy
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref.tuning import IA3Config, LoraConfig, PrefixTuning, PromptTuning, inject_ia3, inject_lora

METHODS = ["lora", "ia3", "prompt", "prefix"]


def pair(method, base, args):
    """``{library: adapted copy of base}`` for one method."""
    import peft

    if method == "lora":
        targets = ["c_attn", "c_proj", "c_fc"]
        return {"lfm_ref": inject_lora(copy.deepcopy(base), LoraConfig(target_modules=targets, r=args.rank, alpha=16)),
                "peft": peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
                    r=args.rank, lora_alpha=16, target_modules=targets, fan_in_fan_out=True, lora_dropout=0.0))}
    if method == "ia3":
        targets, ff = ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]
        return {"lfm_ref": inject_ia3(copy.deepcopy(base), IA3Config(targets, ff)),
                "peft": peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(
                    target_modules=targets, feedforward_modules=ff, fan_in_fan_out=True))}
    if method == "prompt":
        return {"lfm_ref": PromptTuning(copy.deepcopy(base), n_tokens=16),
                "peft": peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
                    task_type="CAUSAL_LM", num_virtual_tokens=16))}
    if method == "prefix":
        return {"lfm_ref": PrefixTuning(copy.deepcopy(base), n_tokens=16, encoder_hidden=512),
                "peft": peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
                    task_type="CAUSAL_LM", num_virtual_tokens=16, prefix_projection=True, encoder_hidden_size=512))}
    raise ValueError(f"unknown method {method!r}")


def step_times(models, x, steps):
    optims = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}
    times = {k: [] for k in models}
    for step in range(steps + 2):
        for name, model in models.items():
            start = time.perf_counter()
            loss = model(input_ids=x, labels=x).loss
            optims[name].zero_grad()
            loss.backward()
            optims[name].step()
            if step >= 2:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--method", default="all", choices=METHODS + ["all"])
    args = parser.parse_args()
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64),
                                      n_positions=args.seq + 16)).train()
    x = torch.randint(0, base.config.vocab_size, (args.batch, args.seq))
    print(f"GPT-2 {args.layers} layers x {args.width}, batch {args.batch} x {args.seq} tokens, "
          f"{torch.get_num_threads()} threads; train step, median of {args.steps}")
    for method in (METHODS if args.method == "all" else [args.method]):
        t = step_times(pair(method, base, args), x, args.steps)
        print(f"{method:>6}: lfm_ref {1000 * t['lfm_ref']:.1f} ms, PEFT {1000 * t['peft']:.1f} ms, "
              f"ratio {t['lfm_ref'] / t['peft']:.2f}")

if __name__ == "__main__":
    main()
