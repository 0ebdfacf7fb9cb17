"""Retrieval-augmented generation with a dense retriever: retrieve documents for a query, then read.

- **Dense retrieval**: ``s(q, d) = E_Q(q)^T E_D(d)``; here ``E`` is the frozen LM's mean-pooled last hidden
  state, and the query side has a trainable linear map (initialised to the identity) so that retrieval
  can be learned while the document index stays fixed (as REPLUG's and REALM's query encoders).
- **RAG-style concatenation** (Lewis et al., 2020, "Retrieval-Augmented Generation for
  Knowledge-Intensive NLP Tasks", NeurIPS; arXiv:2005.11401): the reader sees ``[d; x]``.
- **REPLUG** (Shi et al., 2024, "REPLUG: Retrieval-Augmented Black-Box Language Models", NAACL;
  arXiv:2301.12652): an ensemble over the top-k documents, ``p(y | x) = sum_d softmax(s)_d p_LM(y | [d; x])``,
  and **REPLUG LSR**, which trains the retriever from the LM's likelihoods:
  ``min KL(P_R(d | x) || Q_LM(d | x, y))``, ``P_R = softmax(s / gamma)``,
  ``Q_LM = softmax(log p_LM(y | [d; x]) / beta)``.
- **UPRISE** (Cheng et al., 2023, "UPRISE: Universal Prompt Retrieval for Improving Zero-Shot
  Evaluation", EMNLP; arXiv:2303.08518): a retriever of prompts for a *frozen* LM, trained on some
  task types and used on others; the candidate that most raises the LM's likelihood of the answer is
  the positive, the others negatives (a cross-entropy over the retrieval scores).
- **REALM** (Guu et al., 2020, "REALM: Retrieval-Augmented Language Model Pre-Training", ICML;
  arXiv:2002.08909): retriever and reader trained together by the marginal likelihood
  ``log p(y | x) = log sum_z p(z | x) p(y | z, x)``, whose gradient pushes each retrieval score by
  ``p(z | x, y) - p(z | x)``: up for documents that helped, down for those that did not.

The pipeline retrieve -> prepend -> read is :func:`answer_with_retrieval` (scored by
:func:`evaluate_retrieval`); :func:`retrieval_objective` trains it with :func:`lfm_ref.fit`.
The documents that teach TinyGPT to read are :meth:`lfm_ref.data.FactWorld.reading_documents`.

Chapter: notebooks/06b_retrieval_augmented.ipynb.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .. import checks
from ..lm import at_last_token, encode, next_token_logits, target_ids
from ..utils import device_of, eval_mode

LOSSES = ("replug_lsr", "uprise", "realm")


def mean_hidden(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """The frozen LM's last hidden state averaged over each text's tokens, ``(len(texts), d)``."""
    checks.module(model)
    batch_size = checks.positive_int(batch_size, "batch_size")
    dev = device_of(model)
    batch = encode(tokenizer, texts)
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(batch["input_ids"]), batch_size):
            ids = batch["input_ids"][start:start + batch_size].to(dev)  # (b, T)
            mask = batch["attention_mask"][start:start + batch_size].to(dev)  # (b, T)
            hidden = model(input_ids=ids, attention_mask=mask,
                           output_hidden_states=True).hidden_states[-1]  # (b, T, d)
            # E(x) = sum_t m_t h_t / sum_t m_t: the mean over real (unpadded) tokens, (b, d)
            out.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    return torch.cat(out)


class DenseRetriever(nn.Module):
    """``s(q, d) = (W E(q))^T E(d)`` over a fixed index of documents; only ``W`` (identity at first) trains.

    The encoder ``E`` is the caller's frozen LM, held outside the module tree: the retriever's
    ``parameters()`` and ``state_dict()`` are its own (``query_map`` and the ``index``), and moving or
    putting the retriever in train mode leaves the LM alone.
    """

    def __init__(self, model, tokenizer, documents: Sequence[str]):
        super().__init__()
        checks.module(model)
        self._encoder = (model,)  # a tuple, so that nn.Module does not register the LM as a submodule
        self.tokenizer = tokenizer
        self.documents = checks.texts(documents, "documents")
        index = mean_hidden(model, tokenizer, self.documents)  # (N, d): E(d) for every document
        self.register_buffer("index", index)
        self.query_map = nn.Linear(index.shape[1], index.shape[1], bias=False, device=index.device)
        with torch.no_grad():
            self.query_map.weight.copy_(torch.eye(index.shape[1]))  # W = I: s(q, d) = E(q)^T E(d)

    @property
    def encoder(self) -> nn.Module:
        """The frozen LM whose mean-pooled states encode queries and documents."""
        return self._encoder[0]

    def set_documents(self, documents: Sequence[str]) -> None:
        """Swap the collection (the "datastore"): no weight changes, only the index."""
        self.documents = checks.texts(documents, "documents")
        self.index = mean_hidden(self.encoder, self.tokenizer, self.documents)

    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        """``(len(queries), len(documents))`` inner products; differentiable in ``query_map``."""
        queries = checks.texts(queries, "queries")
        # s(q, d) = (W E(q))^T E(d): (Q, d) @ (d, N) -> (Q, N)
        return self.query_map(mean_hidden(self.encoder, self.tokenizer, queries)) @ self.index.T

    def retrieve(self, queries: Sequence[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-``k`` documents' scores and indices, each ``(len(queries), k)``."""
        k = checks.positive_int(k, "k")
        if k > len(self.documents):
            raise ValueError(f"k must lie in [1, {len(self.documents)}] (the number of documents), got {k}")
        return self.scores(queries).topk(k, dim=1)


def answer_log_probs(model, tokenizer, texts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """``log p(answer | text)`` for each one-token answer, ``(len(texts),)``: the reader's term.

    Differentiable (REALM trains the reader through it); the reader runs in eval mode (no dropout)
    and gets its own mode back.
    """
    texts, answers = checks.texts(texts), checks.texts(answers, "answers")
    if len(texts) != len(answers):
        raise ValueError(f"got {len(texts)} texts but {len(answers)} answers")
    dev = device_of(checks.module(model))
    batch = {k: v.to(dev) for k, v in encode(tokenizer, texts).items()}
    with eval_mode(model):
        logits = model(**batch).logits  # (B, T, V)
    logp = at_last_token(logits, batch["attention_mask"]).log_softmax(-1)  # (B, V)
    return logp.gather(1, target_ids(tokenizer, answers).to(dev)[:, None]).squeeze(1)  # (B,)


def with_documents(documents: Sequence[str], idx: torch.Tensor, queries: Sequence[str]) -> list[str]:
    """``[d; x]`` for every query and each of its retrieved documents, row-major ``(len(queries) * k)``."""
    queries = checks.texts(queries, "queries")
    checks.tensor(idx, "idx", dim=2, floating=False)
    if len(idx) != len(queries):
        raise ValueError(f"idx must have one row per query, ({len(queries)}, k), got {tuple(idx.shape)}")
    return [f"{documents[j]} {q}" for q, row in zip(queries, idx.tolist()) for j in row]


def _check_scores(reader_log_probs, retrieval_scores) -> None:
    checks.tensor(retrieval_scores, "retrieval_scores", dim=2, floating=True)
    checks.tensor(reader_log_probs, "reader_log_probs", dim=(2, 3), floating=True)
    if reader_log_probs.shape[:2] != retrieval_scores.shape:
        raise ValueError(f"reader log-probs {tuple(reader_log_probs.shape)} and retrieval "
                         f"scores {tuple(retrieval_scores.shape)} must both be (queries, k)")


def replug_log_probs(reader_log_probs: torch.Tensor,
                     retrieval_scores: torch.Tensor) -> torch.Tensor:
    """REPLUG's ensemble ``log sum_d softmax(s)_d p(y | [d; x])``.

    Scores are ``(B, k)``; the reader's log-probabilities are ``(B, k)`` (one answer
    each) or ``(B, k, V)`` (every token of the vocabulary; the result is then
    ``(B, V)``). It is also REALM's marginal log-likelihood, whose negative trains
    retriever and reader together.
    """
    _check_scores(reader_log_probs, retrieval_scores)
    log_prior = retrieval_scores.log_softmax(-1)  # log p(d | x), (B, k)
    if reader_log_probs.dim() == 3:
        log_prior = log_prior[..., None]  # (B, k, 1): the same weights for every y
    log_prior = log_prior.to(reader_log_probs.device)
    # log p(y | x) = log sum_d p(d | x) p(y | [d; x])
    return torch.logsumexp(log_prior + reader_log_probs, dim=1)


def uprise_loss(retrieval_scores: torch.Tensor,
                reader_log_probs: torch.Tensor) -> torch.Tensor:
    """UPRISE: cross-entropy of the retrieval scores ``(B, k)`` towards the candidate
    whose prompt gives the frozen LM the highest likelihood of the answer."""
    _check_scores(reader_log_probs, retrieval_scores)
    if reader_log_probs.dim() != 2:
        shape = tuple(reader_log_probs.shape)
        raise ValueError(f"reader_log_probs must be (queries, k), got {shape}")
    # d+ = argmax_d log p_LM(y | [d; x]) is the positive, the other candidates negatives
    positive = reader_log_probs.detach().argmax(-1).to(retrieval_scores.device)
    return nn.functional.cross_entropy(retrieval_scores, positive)  # -log softmax(s)_d+


def replug_lsr_loss(retrieval_scores: torch.Tensor, reader_log_probs: torch.Tensor,
                    gamma: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """REPLUG LSR: ``KL(P_R || Q_LM)`` per query, averaged; the LM's likelihoods are a
    fixed target. Both inputs ``(B, k)``."""
    _check_scores(reader_log_probs, retrieval_scores)
    gamma, beta = checks.positive(gamma, "gamma"), checks.positive(beta, "beta")
    # log P_R(d | x) = log softmax(s / gamma)
    log_p = (retrieval_scores / gamma).log_softmax(-1)
    # log Q_LM(d | x, y) = log softmax(log p_LM(y | [d; x]) / beta)
    log_q = (reader_log_probs.detach() / beta).log_softmax(-1).to(log_p.device)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()  # KL(P_R || Q_LM), averaged


def _check_retriever(retriever) -> None:
    if not isinstance(retriever, DenseRetriever):
        raise TypeError(f"retriever must be a DenseRetriever, got {type(retriever).__name__}")


def answer_with_retrieval(retriever: DenseRetriever, reader, tokenizer,
                          queries: Sequence[str], k: int,
                          mode: str = "replug") -> tuple[torch.Tensor, torch.Tensor]:
    """Retrieve -> prepend -> read: the reader's next-token log-probabilities
    ``(B, V)`` after each query, and the indices ``(B, k)`` of its top-``k`` documents.

    ``mode="rag"`` reads the top document: ``log p(y | [d_1; x])``; ``mode="replug"``
    mixes the top ``k`` by the retriever's softmax: ``log sum_d p(d|x) p(y|[d; x])``.
    """
    _check_retriever(retriever)
    queries = checks.texts(queries, "queries")
    mode = checks.choice(mode, "mode", ("rag", "replug"))
    with torch.no_grad():  # inference: no gradient into the query map
        scores, idx = retriever.retrieve(queries, k)  # (B, k) each
    read = idx[:, :1] if mode == "rag" else idx  # (B, k'): the documents to read
    texts = with_documents(retriever.documents, read, queries)  # B * k' texts [d; x]
    logits = next_token_logits(reader, tokenizer, texts)  # (B * k', V)
    log_probs = logits.log_softmax(-1).view(len(queries), read.shape[1], -1)  # (B,k',V)
    if mode == "rag":
        return log_probs[:, 0], idx
    return replug_log_probs(log_probs, scores), idx


def evaluate_retrieval(retriever: DenseRetriever, reader, tokenizer,
                       queries: Sequence[str], answers: Sequence[str],
                       gold: Sequence[int], k: int,
                       mode: str = "replug") -> tuple[float, float]:
    """``(accuracy, recall@k)`` of :func:`answer_with_retrieval`: the fraction of
    queries answered ``answers[i]``, and of those whose top ``k`` holds ``gold[i]``."""
    queries = checks.texts(queries, "queries")
    answers = checks.texts(answers, "answers")
    gold = [checks.integer(g, "gold", 0) for g in checks.non_empty(gold, "gold")]
    if not len(queries) == len(answers) == len(gold):
        raise ValueError(f"got {len(queries)} queries, {len(answers)} answers and "
                         f"{len(gold)} gold documents")
    log_probs, idx = answer_with_retrieval(retriever, reader, tokenizer, queries, k,
                                           mode)
    predicted = log_probs.argmax(-1)  # (B,)
    right = predicted == target_ids(tokenizer, answers).to(predicted.device)
    found = (idx.cpu() == torch.tensor(gold)[:, None]).any(1)  # gold in the top k
    return right.float().mean().item(), found.float().mean().item()


def retrieval_objective(retriever: DenseRetriever, tokenizer, k: int,
                        loss: str = "replug_lsr") -> Callable:
    """``loss_fn(reader, batch)`` for :func:`lfm_ref.fit` over batches of
    ``(query, answer)`` pairs: retrieve the top ``k`` documents, prepend each to the
    query, read the answer's log-likelihood, and train by ``loss``:

    - ``"realm"``: ``-log sum_d p(d | x) p(y | [d; x])``, retriever and reader together;
    - ``"replug_lsr"``: ``KL(P_R || Q_LM)``, the reader's likelihoods a fixed target;
    - ``"uprise"``: cross-entropy towards the document the reader likes best.

    Give ``fit`` the retriever's parameters (and, for REALM, the reader's trainable
    ones) as ``params``.
    """
    _check_retriever(retriever)
    k, loss = checks.positive_int(k, "k"), checks.choice(loss, "loss", LOSSES)

    def loss_fn(reader: nn.Module, batch: Sequence[tuple[str, str]]) -> torch.Tensor:
        queries, answers = (list(column) for column in zip(*batch))
        scores, idx = retriever.retrieve(queries, k)  # (B, k), differentiable in W
        texts = with_documents(retriever.documents, idx, queries)  # B * k texts [d; x]
        repeated = [a for a in answers for _ in range(k)]  # each answer once per d
        if loss == "realm":
            reader_logp = answer_log_probs(reader, tokenizer, texts, repeated)
            reader_logp = reader_logp.view(len(queries), k)  # (B, k): log p(y | [d; x])
            return -replug_log_probs(reader_logp, scores).mean()
        with torch.no_grad():  # the LM is a black box: its likelihoods are a target
            reader_logp = answer_log_probs(reader, tokenizer, texts, repeated)
        reader_logp = reader_logp.view(len(queries), k)  # (B, k): log p(y | [d; x])
        if loss == "replug_lsr":
            return replug_lsr_loss(scores, reader_logp)
        return uprise_loss(scores, reader_logp)

    return loss_fn
