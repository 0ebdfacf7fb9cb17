"""Part V, model editing: change one fact a model knows, and nothing else.

The interface every editor shares (``base``): :class:`EditRequest`, an editor's ``edit(model,
tokenizer, requests)`` returning an :class:`Edit` (``.model``, ``.restore()``), and the scores
:func:`evaluate_edits` and :func:`sequential_edits`. Editors: ``grace`` (GRACE's codebook), ``serac``
(SERAC's scope classifier and counterfactual reader) and ``memprompt`` (MemPrompt's feedback memory),
both on the ``incontext`` shell; ``finetune`` (FT and FT-L), ``patcher`` (Transformer-Patcher),
``calinet`` (CaliNet's calibration slots) and ``nl_patches`` (natural-language patches, on the
``incontext`` shell's gated rows). Locate and edit: ``tracing`` (causal tracing),
``knowledge_neurons`` (integrated gradients over FFN neurons, and Dai et al.'s edit), ``rome``
(ROME's rank-one update) and ``memit`` (MEMIT's batched update over layers). Meta-learned:
``knowledge_editor`` (KnowledgeEditor's hypernetwork) and ``mend`` (MEND's editor network on the
gradient's rank-one factors).

Chapters: notebooks/16_editing_memory.ipynb (memory-based editors),
notebooks/17_editing_constrained.ipynb (constrained tuning),
notebooks/18_locate_and_edit.ipynb (locate and edit) and notebooks/19_meta_editors.ipynb
(meta-learned editors).
"""
from .base import (
    Edit,
    Editor,
    EditRequest,
    EditScores,
    ModelSnapshot,
    apply_updates,
    check_requests,
    evaluate_edits,
    load_editor,
    save_editor,
    sequential_edits,
    subject_last_token,
)
from .calinet import CalibratedFFN, CaliNet
from .finetune import FineTuneEditor, edit_dataset, last_token_objective, mlp_name
from .grace import Grace, GraceLayer
from .incontext import InContextLM
from .knowledge_editor import KnowledgeEditor, UpdateHead
from .knowledge_neurons import (
    KnowledgeNeuronEditor,
    find_knowledge_neurons,
    integrated_gradients,
    neuron_probability,
)
from .memit import Memit, memit_update
from .memprompt import MemPrompt
from .mend import Mend, MendNet, gradient_factors
from .nl_patches import LanguagePatch, NaturalLanguagePatches, gate_examples, patch_for
from .patcher import PatchedFFN, TransformerPatcher
from .rome import Rome, check_invertible, key_covariance, mlp_keys, rank_one_update, target_deltas
from .serac import ScopeClassifier, Serac, scope_examples
from .tracing import Trace, causal_trace, corrupted_probability, subject_span

__all__ = ["Edit", "EditRequest", "Editor", "EditScores", "ModelSnapshot", "check_requests", "evaluate_edits",
           "sequential_edits", "Grace", "GraceLayer", "InContextLM", "MemPrompt", "ScopeClassifier", "Serac",
           "scope_examples",
           "FineTuneEditor", "edit_dataset", "last_token_objective", "mlp_name", "PatchedFFN", "TransformerPatcher",
           "CalibratedFFN", "CaliNet", "LanguagePatch", "NaturalLanguagePatches", "gate_examples", "patch_for",
           "subject_last_token", "Trace", "causal_trace", "corrupted_probability", "subject_span",
           "KnowledgeNeuronEditor", "integrated_gradients", "find_knowledge_neurons", "neuron_probability",
           "Rome", "check_invertible", "key_covariance", "mlp_keys", "rank_one_update", "target_deltas",
           "Memit", "memit_update", "Mend", "MendNet", "gradient_factors",
           "KnowledgeEditor", "UpdateHead",
           "apply_updates", "save_editor", "load_editor"]
