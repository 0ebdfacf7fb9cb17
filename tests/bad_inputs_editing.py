"""Bad inputs to Part V's shared interface (requests, edits, scores, hooks); collected by
``test_strict_inputs.py`` (``-k editing`` selects them)."""
from functools import lru_cache

from torch import nn

from lfm_ref import hooks
from lfm_ref.data import EditRequest, FactWorld
from lfm_ref.editing import Edit, ModelSnapshot, check_requests, evaluate_edits, sequential_edits


@lru_cache(maxsize=1)
def _world():
    return FactWorld(seed=0)


def _request(**change):
    fields = dict(prompt="Ana Bo was born in", subject="Ana Bo", relation="born_in", target_true="X",
                  target_new="Y")
    return EditRequest(**{**fields, **change})


CASES = [
    ("editing-request-subject-missing", lambda: _request(subject="Cy Do"), ValueError,
     "subject 'Cy Do' is not found in its prompt"),
    ("editing-request-empty-target", lambda: _request(target_new=""), ValueError, "target_new is empty"),
    ("editing-request-unchanged-object", lambda: _request(target_new="X"), ValueError,
     "must change the object"),
    ("editing-requests-as-dicts", lambda: check_requests([{"prompt": "a"}], _world().tokenizer()), TypeError,
     "must be EditRequest objects"),
    ("editing-requests-empty", lambda: check_requests([], _world().tokenizer()), ValueError, "requests is empty"),
    ("editing-requests-foreign-words", lambda: check_requests([_request()], _world().tokenizer()), ValueError,
     "another tokenizer's vocabulary"),
    ("editing-evaluate-state-dict", lambda: evaluate_edits({}, _world().tokenizer(), _world().edit_requests(1)),
     TypeError, "pass the model, not its state_dict"),
    ("editing-sequential-not-an-editor", lambda: sequential_edits(object(), nn.Linear(1, 1), None, []), TypeError,
     "editor must have name, paper and edit"),
    ("editing-snapshot-unknown-parameter", lambda: ModelSnapshot(nn.Linear(1, 1), ["bias2"]), ValueError,
     "has no parameters"),
    ("editing-edit-undo-not-callable", lambda: Edit(nn.Linear(1, 1), undo=None), TypeError, "undo must be a function"),
    ("editing-linear-weight-conv2d", lambda: hooks.linear_weight(nn.Conv2d(1, 1, 1)), TypeError,
     "nn.Linear or GPT-2's Conv1D"),
    ("editing-capture-inputs-one-string", lambda: hooks.capture_inputs(nn.Linear(1, 1), "0").__enter__(),
     TypeError, "not a single string"),
]
