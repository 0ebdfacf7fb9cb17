"""Bad inputs to chapter 17's editors (FT, FT-L); collected by ``test_strict_inputs.py``."""
from functools import lru_cache

from lfm_ref import zoo
from lfm_ref.data import FactWorld
from lfm_ref.editing.finetune import FineTuneEditor


@lru_cache(maxsize=1)
def _setting():
    model, tok = zoo.load("tiny-gpt", device="cpu")
    return model, tok, FactWorld(seed=0).edit_requests(n=2, seed=0)


def _edit(editor, requests=None):
    model, tok, default = _setting()
    return editor.edit(model, tok, default if requests is None else requests)


CASES = [
    ("editing-ft-layer-out-of-range", lambda: _edit(FineTuneEditor(layer=9)), ValueError,
     r"layer must be one of \[0, 1, 2, 3\]"),
    ("editing-ft-empty-requests", lambda: _edit(FineTuneEditor(), []), ValueError, "requests"),
    ("editing-ft-negative-bound", lambda: FineTuneEditor(norm_bound=-1.0), ValueError, "norm_bound"),
    ("editing-ft-zero-steps", lambda: FineTuneEditor(steps=0), ValueError, "steps"),
]

from lfm_ref.editing.patcher import TransformerPatcher  # noqa: E402

CASES += [
    ("editing-patcher-batch-too-large", lambda: _edit(TransformerPatcher(["Ana was born in"])), ValueError,
     "at most 1 request"),
    ("editing-patcher-layer-out-of-range", lambda: _edit(TransformerPatcher(["a b"], layer=7),
                                                         _setting()[2][:1]), ValueError,
     r"layer must be one of \[0, 1, 2, 3\]"),
    ("editing-patcher-empty-memory", lambda: TransformerPatcher([]), ValueError, "memory"),
]

from lfm_ref.editing.calinet import CaliNet  # noqa: E402
from lfm_ref.editing.nl_patches import LanguagePatch, NaturalLanguagePatches  # noqa: E402

CASES += [
    ("editing-calinet-layer-out-of-range", lambda: _edit(CaliNet(layer=5)), ValueError,
     r"layer must be one of \[0, 1, 2, 3\]"),
    ("editing-calinet-zero-slots", lambda: CaliNet(slots=0), ValueError, "slots"),
    ("editing-calinet-empty-requests", lambda: _edit(CaliNet(), []), ValueError, "requests"),
    ("editing-nl-patches-gate-type", lambda: NaturalLanguagePatches("a gate"), TypeError,
     r"gate must be a ScopeClassifier"),
    ("editing-nl-patch-empty-condition", lambda: LanguagePatch("", "Ana works as a poet ."), ValueError,
     r"a patch's condition must be a non-empty string, got ''"),
]
