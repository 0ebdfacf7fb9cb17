"""Bad inputs to chapter 18's locate-and-edit methods; collected by ``test_strict_inputs.py``."""
from functools import lru_cache

import torch

from lfm_ref import zoo
from lfm_ref.data import FactWorld
from lfm_ref.editing.knowledge_neurons import find_knowledge_neurons, integrated_gradients, neuron_probability
from lfm_ref.editing.memit import Memit
from lfm_ref.editing.rome import Rome
from lfm_ref.editing.tracing import causal_trace, corrupted_probability


@lru_cache(maxsize=1)
def _setting():
    model, tok = zoo.load("tiny-gpt", device="cpu")
    return model, tok, FactWorld(seed=0).edit_requests(n=2, seed=0, relation="profession")


def _edit(editor, requests=None):
    model, tok, default = _setting()
    return editor.edit(model, tok, default[:1] if requests is None else requests)


def _trace(fn, **kw):
    model, tok, (r, _) = _setting()
    args = dict(prompt=r.prompt, subject=r.subject, target=r.target_true) | kw
    return fn(model, tok, **args)


_TEXTS = ["Ana was born in Kraleth ."]
CASES = [
    ("editing-rome-no-covariance", lambda: Rome(layer=1), ValueError, "texts to estimate it from"),
    ("editing-rome-layer-out-of-range", lambda: _edit(Rome(layer=7, mom2_adjustment=False)),
     ValueError, r"layer must be one of \[0, 1, 2, 3\]"),
    ("editing-rome-unsupported-model",
     lambda: Rome(layer=0, mom2_adjustment=False).edit(torch.nn.Linear(2, 2), _setting()[1],
                                                       _setting()[2][:1]),
     TypeError, "GPT-2-style models"),
    ("editing-rome-empty-requests", lambda: _edit(Rome(layer=0, mom2_adjustment=False), []),
     ValueError, "requests"),
    ("editing-rome-two-requests", lambda: _edit(Rome(layer=0, mom2_adjustment=False), _setting()[2]),
     ValueError, "at most 1 request"),
    ("editing-rome-singular-covariance",
     lambda: _edit(Rome(layer=0, covariance=torch.zeros(512, 512))), ValueError,
     "singular.*damping"),
    ("editing-memit-descending-layers", lambda: Memit(layers=[2, 1], texts=_TEXTS), ValueError,
     "ascending"),
    ("editing-memit-one-int-layer", lambda: Memit(layers=2, texts=_TEXTS), TypeError,
     "list of block indices"),
    ("editing-memit-covariance-count",
     lambda: Memit(layers=[0, 1], covariances=[torch.eye(4)]), ValueError, "one covariance per layer"),
    ("editing-trace-unknown-kind", lambda: _trace(causal_trace, kind="neurons"), ValueError, "kind"),
    ("editing-trace-restore-out-of-range", lambda: _trace(corrupted_probability, restore=[(9, 0)]),
     ValueError, r"layer in \[0, 4\)"),
    ("editing-trace-subject-not-in-prompt", lambda: _trace(causal_trace, subject="Nobody Here"),
     ValueError, "not found in the prompt"),
    ("editing-kn-empty-prompt",
     lambda: integrated_gradients(*_setting()[:2], "", "baker", layer=1), TypeError,
     "prompt must be a non-empty string"),
    ("editing-kn-prompts-targets-mismatch",
     lambda: neuron_probability(*_setting()[:2], ["a b", "c d"], ["baker"]), ValueError,
     "2 prompts but 1 targets"),
    ("editing-kn-threshold-above-one",
     lambda: find_knowledge_neurons(*_setting()[:2], ["Ana works as a"], "baker", threshold=2.0),
     ValueError, "threshold"),
]

from lfm_ref.editing.mend import Mend  # noqa: E402

CASES += [
    ("editing-mend-edit-before-meta-training", lambda: _edit(Mend(layers=[3])), ValueError,
     "call meta_train"),
    ("editing-mend-one-int-layer", lambda: Mend(layers=3), TypeError, "list of block indices"),
    ("editing-mend-layer-out-of-range",
     lambda: Mend(layers=[9]).meta_train(*_setting()[:2], _setting()[2], ["a b"], steps=1),
     ValueError, r"layer must be one of \[0, 1, 2, 3\]"),
    ("editing-mend-zero-steps",
     lambda: Mend(layers=[3]).meta_train(*_setting()[:2], _setting()[2], ["a b"], steps=0),
     ValueError, "steps"),
]

from lfm_ref.editing.knowledge_editor import KnowledgeEditor  # noqa: E402

CASES += [
    ("editing-ke-edit-before-meta-training", lambda: _edit(KnowledgeEditor(layers=[3])), ValueError,
     "call meta_train"),
    ("editing-ke-two-requests", lambda: _edit(KnowledgeEditor(layers=[3]), _setting()[2]), ValueError,
     "at most 1 request"),
    ("editing-ke-negative-margin", lambda: KnowledgeEditor(margin=-1.0), ValueError, "margin"),
]
