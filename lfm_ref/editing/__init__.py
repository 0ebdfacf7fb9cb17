"""Part V, model editing: change one fact a model knows, and nothing else.

The interface every editor shares (``base``): :class:`EditRequest`, an editor's ``edit(model,
tokenizer, requests)`` returning an :class:`Edit` (``.model``, ``.restore()``), and the scores
:func:`evaluate_edits` and :func:`sequential_edits`.

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

__all__ = ["Edit", "EditRequest", "Editor", "EditScores", "ModelSnapshot", "check_requests", "evaluate_edits",
           "sequential_edits"]
