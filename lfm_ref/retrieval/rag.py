"""Retrieval-augmented generation with a dense retriever: retrieve documents for a query, then read.

- **Dense retrieval**: ``s(q, d) = E_Q(q)^T E_D(d)``; here ``E`` is the frozen LM's mean-pooled last hidden
  state, and the query side has a trainable linear map (initialised to the identity) so that retrieval
  can be learned while the document index stays fixed (as REPLUG's and REALM's query encoders).
- **RAG-style concatenation** (Lewis et al., 2020, "Retrieval-Augmented Generation for
  Knowledge-Intensive NLP Tasks", NeurIPS; arXiv:2005.11401): the reader sees ``[d; x]``.
- **REPLUG** (Shi et al., 2024, "REPLUG: Retrieval-Augmented Black-Box Language Models", NAACL;
  arXiv:2301.12652): an ensemble over the top-k documents, ``p(y | x) = sum_d softmax(s)_d p_LM(y | [d; x])``,
  and **REPLUG LSR**, which trains the retriever from the LM's likelihoods:
  ``min KL(P_R(d | x) || Q_LM(d | x, y))``, ``P_R = softmax(s / gamma)``, ``Q_LM = softmax(log p_LM(y | [d; x]) / beta)``.
- **UPRISE** (Cheng et al., 2023, "UPRISE: Universal Prompt Retrieval for Improving Zero-Shot
  Evaluation", EMNLP; arXiv:2303.08518): a retriever of prompts for a *frozen* LM, trained on some
  task types and used on others; the candidate that most raises the LM's likelihood of the answer is
  the positive, the others negatives (a cross-entropy over the retrieval scores).
- **REALM** (Guu et al., 2020, "REALM: Retrieval-Augmented Language Model Pre-Training", ICML;
  arXiv:2002.08909): retriever and reader trained together by the marginal likelihood
  ``log p(y | x) = log sum_z p(z | x) p(y | z, x)``, whose gradient pushes each retrieval score by
  ``p(z | x, y) - p(z | x)``: up for documents that helped, down for those that did not.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..lm import at_last_token, encode, target_ids


def reading_pairs(world, n: int, seed: int = 0, counterfactual: float = 0.5) -> list[tuple[str, str]]:
    """``(document + " " + question, answer)`` pairs that teach a language model to *read*: the document is
    a fact's sentence in one template, the question its prompt in another, and with probability
    ``counterfactual`` the document states a different object, which is then the answer, so that
    memory cannot replace reading. Only the world's training facts are used."""
    import random

    from ..data.facts import N_PRETRAIN_TEMPLATES, Fact

    if not 0 <= counterfactual <= 1:
        raise ValueError(f"counterfactual must lie in [0, 1], got {counterfactual}")
    rng = random.Random(seed)
    facts = world.split("train")
    pairs = []
    for _ in range(n):
        fact = rng.choice(facts)
        if rng.random() < counterfactual:
            fact = Fact(fact.subject, fact.relation, rng.choice([o for o in world.objects(fact.relation) if o != fact.object]))
        doc_t, query_t = rng.randrange(N_PRETRAIN_TEMPLATES), rng.randrange(N_PRETRAIN_TEMPLATES)
        pairs.append((f"{fact.sentence(doc_t)} {fact.prompt(query_t)}", fact.object))
    return pairs


def mean_hidden(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """The frozen LM's last hidden state averaged over each text's tokens, ``(len(texts), d)``."""
    dev = next(model.parameters()).device
    batch = encode(tokenizer, texts)
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            ids = batch["input_ids"][start:start + batch_size].to(dev)
            mask = batch["attention_mask"][start:start + batch_size].to(dev)
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            out.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    return torch.cat(out)


class DenseRetriever(nn.Module):
    """``s(q, d) = (W E(q))^T E(d)`` over a fixed index of documents; only ``W`` (identity at first) trains."""

    def __init__(self, model, tokenizer, documents: Sequence[str]):
        super().__init__()
        if len(documents) == 0:
            raise ValueError("the document collection is empty")
        self.model, self.tokenizer = model, tokenizer
        self.documents = list(documents)
        index = mean_hidden(model, tokenizer, self.documents)
        self.register_buffer("index", index)
        self.query_map = nn.Linear(index.shape[1], index.shape[1], bias=False, device=index.device)
        with torch.no_grad():
            self.query_map.weight.copy_(torch.eye(index.shape[1]))

    def set_documents(self, documents: Sequence[str]) -> None:
        """Swap the collection (the "datastore"): no weight changes, only the index."""
        if len(documents) == 0:
            raise ValueError("the document collection is empty")
        self.documents = list(documents)
        self.index = mean_hidden(self.model, self.tokenizer, self.documents)

    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        """``(len(queries), len(documents))`` inner products; differentiable in ``query_map``."""
        return self.query_map(mean_hidden(self.model, self.tokenizer, queries)) @ self.index.T

    def retrieve(self, queries: Sequence[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-``k`` documents' scores and indices, each ``(len(queries), k)``."""
        if not 1 <= k <= len(self.documents):
            raise ValueError(f"k must lie in [1, {len(self.documents)}], got {k}")
        return self.scores(queries).topk(k, dim=1)


def answer_log_probs(model, tokenizer, texts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """``log p(answer | text)`` for the answer's first token, differentiable (the reader's term)."""
    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in encode(tokenizer, texts).items()}
    logp = at_last_token(model(**batch).logits, batch["attention_mask"]).log_softmax(-1)
    return logp.gather(1, target_ids(tokenizer, answers).to(dev)[:, None]).squeeze(1)


def with_documents(documents: Sequence[str], idx: torch.Tensor, queries: Sequence[str]) -> list[str]:
    """``[d; x]`` for every query and each of its retrieved documents, row-major ``(len(queries) * k)``."""
    return [f"{documents[j]} {q}" for q, row in zip(queries, idx.tolist()) for j in row]


def replug_log_probs(reader_log_probs: torch.Tensor, retrieval_scores: torch.Tensor) -> torch.Tensor:
    """REPLUG's ensemble ``log sum_d softmax(s)_d p(y | [d; x])``; both inputs ``(B, k)``. It is also
    REALM's marginal log-likelihood, whose negative trains retriever and reader together."""
    if reader_log_probs.shape != retrieval_scores.shape:
        raise ValueError(f"reader log-probs {tuple(reader_log_probs.shape)} and retrieval scores "
                         f"{tuple(retrieval_scores.shape)} must both be (queries, k)")
    return torch.logsumexp(retrieval_scores.log_softmax(-1) + reader_log_probs, dim=-1)


def uprise_loss(retrieval_scores: torch.Tensor, reader_log_probs: torch.Tensor) -> torch.Tensor:
    """UPRISE: cross-entropy of the retrieval scores ``(B, k)`` towards the candidate whose prompt gives the
    frozen LM the highest likelihood of the answer."""
    if reader_log_probs.shape != retrieval_scores.shape:
        raise ValueError(f"reader log-probs {tuple(reader_log_probs.shape)} and retrieval scores "
                         f"{tuple(retrieval_scores.shape)} must both be (queries, k)")
    return nn.functional.cross_entropy(retrieval_scores, reader_log_probs.detach().argmax(-1))


def replug_lsr_loss(retrieval_scores: torch.Tensor, reader_log_probs: torch.Tensor, gamma: float = 1.0,
                    beta: float = 1.0) -> torch.Tensor:
    """REPLUG LSR: ``KL(P_R || Q_LM)`` per query, averaged; the LM's likelihoods are a fixed target."""
    log_p = (retrieval_scores / gamma).log_softmax(-1)
    log_q = (reader_log_probs.detach() / beta).log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
