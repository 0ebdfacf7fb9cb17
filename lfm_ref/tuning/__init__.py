"""Part I, model tuning: adapting a foundation model's weights, inputs or data (LoRA so far)."""
from .lora import (LoraConfig, LoraLinear, inject_lora, lora_layers, lora_state_dict, merge_lora, unload_lora,
                   unmerge_lora)

__all__ = ["LoraConfig", "LoraLinear", "inject_lora", "lora_layers", "lora_state_dict", "merge_lora", "unload_lora",
           "unmerge_lora"]
