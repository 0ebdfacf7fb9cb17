"""Bad inputs to the core LM helpers, training loop, data, zoo and database augmentation (kNN-LM,
dense retrieval, RAG); collected by ``test_strict_inputs.py`` (``-k data_lm`` selects them)."""
from functools import lru_cache

import torch
from torch import nn

from lfm_ref import evaluate, fit, hooks, lm, plotting, zoo
from lfm_ref.data import (
    FactWorld,
    capital_pairs,
    digits_task,
    merge_task,
    rotate,
    rotation_task,
    similar_class_pairs,
    subpopulation_task,
)
from lfm_ref.retrieval import (
    DenseRetriever,
    build_datastore,
    evaluate_retrieval,
    knn_lm_probs,
    replug_log_probs,
    retrieval_objective,
    with_documents,
)


@lru_cache(maxsize=1)
def _world():
    return FactWorld(seed=0)


@lru_cache(maxsize=1)
def _lm():
    """A 1-layer GPT-2 over the fact world's tokenizer, built from a config (no weights to load)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _world().tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1,
                                       n_head=2))
    return model.eval(), tok


_DOCS = ("Paris is a city .", "Rome is a city .")


@lru_cache(maxsize=1)
def _store():
    model, tok = _lm()
    return build_datastore(model, tok, list(_DOCS))


@lru_cache(maxsize=1)
def _retriever():
    model, tok = _lm()
    return DenseRetriever(model, tok, list(_DOCS))


def _knn(**kwargs):
    model, tok = _lm()
    return knn_lm_probs(model, tok, ["Paris is a"], _store(), **kwargs)


_X, _Y = torch.randn(8, 3), torch.zeros(8, dtype=torch.long)

CASES = [
    ("data_lm-fit-steps-given-str", lambda: fit(nn.Linear(3, 2), (_X, _Y), steps="100", device="cpu"),
     TypeError, r"steps must be an int, got str \('100'\)"),
    ("data_lm-fit-loss-fn-not-callable", lambda: fit(nn.Linear(3, 2), (_X, _Y), loss_fn="cross_entropy",
                                                     device="cpu"),
     TypeError, r"loss_fn must be a function loss_fn\(model, batch\).*got str"),
    ("data_lm-fit-lr-given-str", lambda: fit(nn.Linear(3, 2), (_X, _Y), lr="1e-3", device="cpu"),
     TypeError, r"lr must be a number \(int or float\), got str"),
    ("data_lm-fit-given-a-state-dict", lambda: fit(nn.Linear(3, 2).state_dict(), (_X, _Y), device="cpu"),
     TypeError, r"model must be a torch.nn.Module, got OrderedDict.*not its state_dict"),
    ("data_lm-evaluate-label-outside-classes", lambda: evaluate(nn.Linear(3, 2), (_X, torch.full((8,), 2))),
     ValueError, r"labels must hold class indices in \[0, 2\), got values from 2 to 2"),
    ("data_lm-encode-given-a-string", lambda: lm.encode(_lm()[1], "Paris is a city ."),
     TypeError, r"texts must be a list of strings, got str \('Paris is a city .'\)"),
    ("data_lm-target-ids-given-a-string", lambda: lm.target_ids(_lm()[1], "Paris"),
     TypeError, r"targets must be a list of strings, got str \('Paris'\)"),
    ("data_lm-target-ids-multi-token", lambda: lm.target_ids(_lm()[1], ["city", "is a"]),
     ValueError, r"targets must each be a single token after a space; 1 of 2 are not: \['is a'\]"),
    ("data_lm-complete-max-new-tokens-zero", lambda: lm.complete(*_lm(), "Paris is a", max_new_tokens=0),
     ValueError, "max_new_tokens must be an int >= 1, got 0"),
    ("data_lm-knn-lam-above-one", lambda: _knn(lam=1.5),
     ValueError, r"lam \(the interpolation weight\) must lie in \[0.0, 1.0\], got 1.5"),
    ("data_lm-knn-k-zero", lambda: _knn(k=0), ValueError, "k must be an int >= 1, got 0"),
    ("data_lm-knn-k-given-float", lambda: _knn(k=2.0), TypeError, r"k must be an int, got float \(2.0\)"),
    ("data_lm-knn-datastore-given-texts", lambda: knn_lm_probs(*_lm(), ["a"], list(_DOCS)),
     TypeError, "datastore must be a Datastore .*got list"),
    ("data_lm-zoo-load-unknown-name", lambda: zoo.load("tiny-gtp"),
     ValueError, r"unknown zoo model 'tiny-gtp'. Did you mean 'tiny-gpt'\?"),
    ("data_lm-zoo-load-given-int", lambda: zoo.load(3), TypeError, "model name must be a string or a path, got int"),
    ("data_lm-zoo-zero-shot-of-a-cnn", lambda: zoo.zero_shot(zoo.TinyCNN()), TypeError,
     "model must be a TinyViT .*got TinyCNN"),
    ("data_lm-digits-task-unknown", lambda: digits_task("rot45"),
     ValueError, r"unknown digits task 'rot45'; known tasks: \["),
    ("data_lm-merge-task-unknown", lambda: merge_task("digits"),
     ValueError, r"name must be a merge task, one of \['flip', 'invert', 'rot90', 'shift'\], got 'digits'"),
    ("data_lm-rotate-not-images", lambda: rotate(torch.zeros(8, 8), 30),
     ValueError, r"x must have 4 dimensions, got shape \(8, 8\)"),
    ("data_lm-rotate-angle-str", lambda: rotate(torch.zeros(1, 1, 8, 8), "30"),
     TypeError, r"angle must be a number \(int or float\), got str"),
    ("data_lm-rotation-task-empty", lambda: rotation_task([]),
     ValueError, r"angles must be an angle or a non-empty sequence of angles"),
    ("data_lm-pairs-odd-classes", lambda: similar_class_pairs(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])),
     ValueError, r"labels must hold an even number of classes to pair, got 3"),
    ("data_lm-subpopulation-part", lambda: subpopulation_task(((0, 1),), part="test"),
     ValueError, r"part must be one of"),
    ("data_lm-subpopulation-pairs", lambda: subpopulation_task((0, 1)),
     TypeError, r"pairs must be a sequence of \(digit, digit\) pairs, got \(0, 1\)"),
    ("data_lm-digits-task-seed-str", lambda: digits_task("noise", seed="0"),
     TypeError, r"seed must be an int, got str \('0'\)"),
    ("data_lm-fact-world-seed-str", lambda: FactWorld(seed="0"), TypeError, r"seed must be an int, got str \('0'\)"),
    ("data_lm-fact-world-people-float", lambda: FactWorld(n_people=30.0), TypeError, "n_people must be an int"),
    ("data_lm-edit-requests-unknown-relation", lambda: _world().edit_requests(relation="capital"),
     ValueError, r"relation must be one of \['born_in', 'profession', 'country', 'language'\]"),
    ("data_lm-retriever-given-a-state-dict", lambda: DenseRetriever(_lm()[0].state_dict(), _lm()[1], list(_DOCS)),
     TypeError, r"model must be a torch.nn.Module, got OrderedDict"),
    ("data_lm-retriever-documents-a-string", lambda: DenseRetriever(*_lm(), "Paris is a city ."),
     TypeError, r"documents must be a list of strings, got str"),
    ("data_lm-retriever-k-given-str", lambda: _retriever().retrieve(["Rome is a"], k="2"),
     TypeError, r"k must be an int, got str \('2'\)"),
    ("data_lm-retriever-k-above-documents", lambda: _retriever().retrieve(["Rome is a"], k=3),
     ValueError, r"k must lie in \[1, 2\] \(the number of documents\), got 3"),
    ("data_lm-retriever-queries-a-string", lambda: _retriever().scores("Rome is a"),
     TypeError, r"queries must be a list of strings, got str"),
    ("data_lm-with-documents-idx-rows", lambda: with_documents(list(_DOCS), torch.tensor([[0], [1]]), ["q"]),
     ValueError, r"idx must have one row per query, \(1, k\), got \(2, 1\)"),
    ("data_lm-replug-shapes-differ", lambda: replug_log_probs(torch.zeros(2, 3), torch.zeros(2, 4)),
     ValueError, r"reader log-probs \(2, 3\) and retrieval scores \(2, 4\) must both be \(queries, k\)"),
    ("data_lm-replug-scores-a-list", lambda: replug_log_probs(torch.zeros(2, 3), [[0.0] * 3] * 2),
     TypeError, "retrieval_scores must be a torch.Tensor, got list"),
    ("data_lm-evaluate-retrieval-gold-str", lambda: evaluate_retrieval(_retriever(), *_lm(), ["Rome is a"],
                                                                       ["city"], ["0"], k=1),
     TypeError, r"gold must be an int, got str \('0'\)"),
    ("data_lm-retrieval-objective-unknown-loss", lambda: retrieval_objective(_retriever(), _lm()[1], 1, "kl"),
     ValueError, r"loss must be one of \['replug_lsr', 'uprise', 'realm'\], got 'kl'"),
    ("data_lm-get-module-unknown-name", lambda: hooks.get_module(nn.Sequential(nn.Linear(2, 2)), "1"),
     ValueError, r"Sequential has no module '1'; close names"),
    ("data_lm-plot-history-window-str", lambda: plotting.plot_history([1.0, 0.5], window="5"),
     TypeError, r"window must be an int, got str \('5'\)"),
    ("data_lm-capital-pairs-unknown-country", lambda: capital_pairs(["Atlantis"]),
     ValueError, r"countries must be among \['France'.*got \['Atlantis'\]"),
    ("data_lm-capital-pairs-template-without-slot", lambda: capital_pairs(2, "The capital is"),
     ValueError, r"template must be a string with a \{c\} slot"),
    ("data_lm-documents-n-zero", lambda: _world().documents(0), ValueError, r"n must be an int >= 1, got 0"),
    ("data_lm-documents-one-sentence", lambda: _world().documents(5, sentences=(1, 3)),
     ValueError, r"sentences must be a pair \(low, high\) of ints with 2 <= low <= high, got \(1, 3\)"),
    ("data_lm-documents-max-words-too-small", lambda: _world().documents(5, max_words=10),
     ValueError, r"max_words must be an int >= 26, got 10"),
    ("data_lm-reading-documents-fresh-above-one", lambda: _world().reading_documents(5, fresh=2),
     ValueError, r"fresh must lie in \[0.0, 1.0\], got 2.0"),
    ("data_lm-reading-documents-recall-negative", lambda: _world().reading_documents(5, recall=-0.1),
     ValueError, r"recall must lie in \[0.0, 1.0\], got -0.1"),
    ("data_lm-reading-documents-format-string", lambda: _world().reading_documents(5, formats="question"),
     ValueError, r"formats must be a list of names among \['command', 'fill', 'question'\], got 'question'"),
    ("data_lm-reading-documents-empty-context", lambda: _world().reading_documents(5, context=(0, 2)),
     ValueError, r"context must be a pair \(low, high\) of ints with 1 <= low <= high, got \(0, 2\)"),
    ("data_lm-strangers-more-than-names", lambda: _world().strangers(10**6),
     ValueError, r"n must be an int between 1 and the unused names of this world \(\d+\), got 1000000"),
    ("data_lm-strangers-zero", lambda: _world().strangers(0), ValueError, r"n must be .*got 0"),
]
