"""LoRA training-step time, lfm_ref against PEFT, on a GPT-2-shaped model (a report, not a test).

    python scripts/bench_lora.py [--layers 6 --width 384 --seq 128 --batch 8 --steps 20]

Both adapt c_attn, c_proj and c_fc with the same rank; the time is the median of forward + backward +
AdamW step over ``--steps`` steps, after two warm-up steps, alternating the two libraries.
"""
import argparse
import copy
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref.tuning import LoraConfig, inject_lora


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    import peft

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64),
                                      n_positions=args.seq)).train()
    targets = ["c_attn", "c_proj", "c_fc"]
    models = {
        "lfm_ref": inject_lora(copy.deepcopy(base), LoraConfig(target_modules=targets, r=args.rank, alpha=16)),
        "peft": peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=args.rank, lora_alpha=16, target_modules=targets,
                                                                         fan_in_fan_out=True, lora_dropout=0.0)),
    }
    x = torch.randint(0, base.config.vocab_size, (args.batch, args.seq))
    optims = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}
    times = {k: [] for k in models}
    for step in range(args.steps + 2):
        for name, model in models.items():
            start = time.perf_counter()
            loss = model(input_ids=x, labels=x).loss
            optims[name].zero_grad()
            loss.backward()
            optims[name].step()
            if step >= 2:
                times[name].append(time.perf_counter() - start)
    ours, theirs = statistics.median(times["lfm_ref"]), statistics.median(times["peft"])
    print(f"GPT-2 {args.layers} layers x {args.width}, batch {args.batch} x {args.seq} tokens, rank {args.rank}, "
          f"{torch.get_num_threads()} threads")
    print(f"train step (median of {args.steps}): lfm_ref {1000 * ours:.1f} ms, PEFT {1000 * theirs:.1f} ms, "
          f"ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
