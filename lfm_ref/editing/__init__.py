"""Part V, model editing: change one fact a model knows, and nothing else.

The interface every editor shares (``base``): :class:`EditRequest`, an editor's ``edit(model,
tokenizer, requests)`` returning an :class:`Edit` (``.model``, ``.restore()``), and the scores
:func:`evaluate_edits` and :func:`sequential_edits`. Editors so far: ``grace`` (GRACE's codebook),
``finetune`` (FT and FT-L) and ``patcher`` (Transformer-Patcher); their chapters are being written.

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
from .finetune import FineTuneEditor, edit_dataset, last_token_objective, mlp_name
from .grace import Grace, GraceLayer
from .patcher import PatchedFFN, TransformerPatcher

__all__ = ["Edit", "EditRequest", "Editor", "EditScores", "ModelSnapshot", "check_requests", "evaluate_edits",
           "sequential_edits", "Grace", "GraceLayer",
           "FineTuneEditor", "edit_dataset", "last_token_objective", "mlp_name", "PatchedFFN", "TransformerPatcher"]
