"""Part V, model editing: change one fact a model knows, and nothing else.

The interface every editor shares (``base``): :class:`EditRequest`, an editor's ``edit(model,
tokenizer, requests)`` returning an :class:`Edit` (``.model``, ``.restore()``), and the scores
:func:`evaluate_edits` and :func:`sequential_edits`. Editors: ``grace`` (GRACE's codebook), ``serac``
(SERAC's scope classifier and counterfactual reader) and ``memprompt`` (MemPrompt's feedback memory),
both on the ``incontext`` shell; ``finetune`` (FT and FT-L), ``patcher`` (Transformer-Patcher),
``calinet`` (CaliNet's calibration slots) and ``nl_patches`` (natural-language patches, on the
``incontext`` shell's gated rows).

Chapters: notebooks/16_editing_memory.ipynb (memory-based editors) and
notebooks/17_editing_constrained.ipynb (constrained tuning).
"""
from .base import (
    Edit,
    Editor,
    EditRequest,
    EditScores,
    ModelSnapshot,
    check_requests,
    evaluate_edits,
    sequential_edits,
)
from .calinet import CalibratedFFN, CaliNet
from .finetune import FineTuneEditor, edit_dataset, last_token_objective, mlp_name
from .grace import Grace, GraceLayer
from .incontext import InContextLM
from .memprompt import MemPrompt
from .nl_patches import LanguagePatch, NaturalLanguagePatches, gate_examples, patch_for
from .patcher import PatchedFFN, TransformerPatcher
from .serac import ScopeClassifier, Serac, scope_examples

__all__ = ["Edit", "EditRequest", "Editor", "EditScores", "ModelSnapshot", "check_requests", "evaluate_edits",
           "sequential_edits", "Grace", "GraceLayer", "InContextLM", "MemPrompt", "ScopeClassifier", "Serac",
           "scope_examples",
           "FineTuneEditor", "edit_dataset", "last_token_objective", "mlp_name", "PatchedFFN", "TransformerPatcher",
           "CalibratedFFN", "CaliNet", "LanguagePatch", "NaturalLanguagePatches", "gate_examples", "patch_for"]
