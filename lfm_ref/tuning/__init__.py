"""Part I, model tuning: adapting a foundation model's weights (which ones to tune, LoRA, (IA)^3, adapters),
its inputs or its data."""
from .adapters import (AdapterConfig, AdapterFusion, AdapterLayer, BottleneckAdapter, CompacterAdapter, PHMLinear,
                       adapter_modules, inject_adapter_fusion, inject_adapters, unload_adapters)
from .black_box import (BlackBoxTuning, PromptPolicy, boosted_predict, cma_es, prompt_boosting,
                        rl_prompt)
from .finetune import MODES, lp_ft, select_trainable, wise_ft
from .ia3 import IA3Config, IA3Layer, ia3_layers, inject_ia3, merge_ia3, unload_ia3, unmerge_ia3
from .inject import trainable_state_dict
from .prompts import HardPromptPEZ, PrefixTuning, PromptTuning, few_shot_prompt
from .visual import VisualPrefixLM
from .lora import (LoraConfig, LoraLinear, inject_lora, lora_layers, lora_state_dict, merge_lora, unload_lora,
                   unmerge_lora)

__all__ = ["AdapterConfig", "AdapterFusion", "AdapterLayer", "BottleneckAdapter", "CompacterAdapter", "PHMLinear",
           "adapter_modules", "inject_adapter_fusion", "inject_adapters", "unload_adapters",
           "BlackBoxTuning", "PromptPolicy", "boosted_predict", "cma_es", "prompt_boosting", "rl_prompt",
           "MODES", "lp_ft", "select_trainable", "wise_ft",
           "IA3Config", "IA3Layer", "ia3_layers", "inject_ia3", "merge_ia3", "unload_ia3", "unmerge_ia3",
           "trainable_state_dict",
           "HardPromptPEZ", "PrefixTuning", "PromptTuning", "few_shot_prompt",
           "VisualPrefixLM",
           "LoraConfig", "LoraLinear", "inject_lora", "lora_layers", "lora_state_dict", "merge_lora", "unload_lora",
           "unmerge_lora"]
