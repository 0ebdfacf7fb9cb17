"""Part I, model tuning: adapting a foundation model's weights (which ones to tune, LoRA, (IA)^3,
adapters), its inputs (prompts, with or without gradients) or its data (instruction tuning).

Two patterns, as in PEFT. **Inject**: a layer method (LoRA, (IA)^3, adapters, AdapterFusion) replaces
target layers of the model in place by wrappers (``inject_lora(model, LoraConfig(...))``); one API
then serves every such method: :func:`wrapped_layers`, :func:`merge_layers`, :func:`unmerge_layers`,
:func:`unload_layers` and :func:`trainable_state_dict`, each taking the layer class as ``kind``.
**Wrap**: a prompt method (:class:`PromptTuning`, :class:`PrefixTuning`, :class:`HardPromptPEZ`,
:class:`VisualPrefixLM`) is a module around the frozen model that adds what goes in front of its input.

Glossary: here "merge" means folding an adapter's update into its base weight (PEFT's sense); combining
several models is Part III's ``lfm_ref.reuse``. "Adapters" are the bottleneck modules of Houlsby et al.
and Compacter, not PEFT's generic word for any tuner.
"""
from .adapters import (
    AdapterConfig,
    AdapterFusion,
    AdapterLayer,
    BottleneckAdapter,
    CompacterAdapter,
    PHMLinear,
    adapter_modules,
    inject_adapter_fusion,
    inject_adapters,
)
from .black_box import (
    BlackBoxTuning,
    PromptPolicy,
    boosted_predict,
    cma_es,
    learned_verbaliser,
    prompt_boosting,
    rl_prompt,
    verbalised_predict,
)
from .finetune import MODES, lp_ft, select_trainable, wise_ft
from .ia3 import IA3Config, IA3Layer, inject_ia3
from .inject import WrappedLayer, merge_layers, trainable_state_dict, unload_layers, unmerge_layers, wrapped_layers
from .lora import LoraConfig, LoraLinear, inject_lora, lora_state_dict
from .prompts import HardPromptPEZ, PrefixTuning, PromptTuning, few_shot_prompt
from .visual import VisualPrefixLM

__all__ = ["AdapterConfig", "AdapterFusion", "AdapterLayer", "BottleneckAdapter", "CompacterAdapter", "PHMLinear",
           "adapter_modules", "inject_adapter_fusion", "inject_adapters",
           "BlackBoxTuning", "PromptPolicy", "boosted_predict", "cma_es", "learned_verbaliser", "prompt_boosting",
           "rl_prompt", "verbalised_predict",
           "MODES", "lp_ft", "select_trainable", "wise_ft",
           "IA3Config", "IA3Layer", "inject_ia3",
           "WrappedLayer", "merge_layers", "trainable_state_dict", "unload_layers", "unmerge_layers", "wrapped_layers",
           "LoraConfig", "LoraLinear", "inject_lora", "lora_state_dict",
           "HardPromptPEZ", "PrefixTuning", "PromptTuning", "few_shot_prompt",
           "VisualPrefixLM"]
