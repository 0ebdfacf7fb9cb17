"""Bad inputs to chapter 16's prompt-side editors (SERAC, MemPrompt); collected by ``test_strict_inputs.py``."""
from functools import lru_cache

from lfm_ref import zoo
from lfm_ref.data import EditRequest, FactWorld
from lfm_ref.editing.incontext import InContextLM
from lfm_ref.editing.memprompt import MemPrompt
from lfm_ref.editing.serac import ScopeClassifier, Serac, scope_examples
from lfm_ref.retrieval.rag import DenseRetriever


@lru_cache(maxsize=1)
def _setting():
    model, tok = zoo.load("tiny-gpt", device="cpu")
    return model, tok, FactWorld(seed=0).edit_requests(n=4, seed=0, relation="profession")


def _scope():
    model, tok, _ = _setting()
    return ScopeClassifier(model, tok)


CASES = [
    ("editing-serac-scope-type", lambda: Serac("a classifier"), TypeError, r"scope must be a ScopeClassifier"),
    ("editing-serac-one-class", lambda: _scope().fit([("a .", "b", 1.0)]), ValueError,
     r"both in-scope \(1\) and out-of-scope \(0\)"),
    ("editing-serac-others-length", lambda: scope_examples(_setting()[2], others=[["x"]]), ValueError,
     r"others must hold one list of prompts per request \(4\), got 1"),
    ("editing-serac-empty-requests", lambda: Serac(_scope()).edit(*_setting()[:2], []), ValueError, "requests"),
    ("editing-serac-unknown-words", lambda: Serac(_scope()).edit(*_setting()[:2], [EditRequest(
        "Zyxq Wvut works as a", "Zyxq Wvut", "profession", "poet", "baker")]), ValueError,
     r"words the tokenizer does not know: \['Wvut', 'Zyxq'\]"),
    ("editing-serac-pair-length", lambda: _scope().pair_logits(["a .", "b ."], ["a"]), ValueError,
     r"got 2 edits but 1 inputs"),
    ("editing-memprompt-pair-length", lambda: MemPrompt(DenseRetriever(*_setting()[:2], ["a ."])).pair_scores(
        ["a ."], ["a", "b"]), ValueError, r"got 1 feedback texts but 2 inputs"),
    ("editing-memprompt-retriever-type", lambda: MemPrompt(_setting()[0]), TypeError,
     r"retriever must be a lfm_ref.retrieval.DenseRetriever, got GPT2LMHeadModel"),
    ("editing-incontext-router-answer", lambda: InContextLM(
        *_setting()[:2], lambda texts: [3] * len(texts)).routes(["a b"]), TypeError,
     r"the router must answer None, a context string or \(context, gate\), got 3"),
]
