"""Bad inputs to the contrastive retriever (chapter 6b) and the noisy fact corpus (chapter 9);
collected by ``test_strict_inputs.py`` (``-k retrieval`` selects them)."""
from functools import lru_cache

import torch

from lfm_ref.data import FactWorld
from lfm_ref.data.noisy_facts import noisy_corpus
from lfm_ref.retrieval import DenseRetriever
from lfm_ref.retrieval.contrastive import in_batch_contrastive_loss, train_contrastive


@lru_cache(maxsize=1)
def _world():
    return FactWorld(seed=0)


@lru_cache(maxsize=1)
def _retriever():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _world().tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2))
    return DenseRetriever(model.eval(), tok, ["Paris is a city .", "Rome is a city ."])


_PAIRS = [("Paris is", "Paris is a city ."), ("Rome is", "Rome is a city .")]

CASES = [
    ("retrieval-contrastive-loss-1d", lambda: in_batch_contrastive_loss(torch.randn(4), torch.randn(4)),
     ValueError, "query_embeddings"),
    ("retrieval-contrastive-loss-shapes", lambda: in_batch_contrastive_loss(torch.randn(4, 3), torch.randn(3, 3)),
     ValueError, "document_embeddings"),
    ("retrieval-contrastive-not-a-retriever", lambda: train_contrastive("r", _PAIRS),
     TypeError, "retriever must be a DenseRetriever, got str"),
    ("retrieval-contrastive-one-pair", lambda: train_contrastive(_retriever(), _PAIRS[:1]),
     ValueError, "pairs must be a list of at least 2"),
    ("retrieval-contrastive-steps", lambda: train_contrastive(_retriever(), _PAIRS, steps=0),
     ValueError, "steps must be an int >= 1"),
    ("retrieval-contrastive-lr", lambda: train_contrastive(_retriever(), _PAIRS, lr=-1.0),
     ValueError, "lr"),
    ("noisy-corpus-world", lambda: noisy_corpus("w", _world().facts[:2]), TypeError, "world must be a FactWorld"),
    ("noisy-corpus-noise", lambda: noisy_corpus(_world(), _world().facts[:2], noise=0.6), ValueError, "noise"),
    ("noisy-corpus-repeats", lambda: noisy_corpus(_world(), _world().facts[:2], repeats=1.5),
     TypeError, "repeats must be an int"),
]
