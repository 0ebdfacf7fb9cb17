"""A contrastively trained dense retriever: the off-the-shelf retriever that REPLUG plugs in.

REPLUG (Shi et al., 2024, arXiv:2301.12652) starts from Contriever (Izacard et al., 2022, "Unsupervised
Dense Information Retrieval with Contrastive Learning", TMLR; arXiv:2112.09118), a retriever trained
with in-batch negatives: for a batch of positive pairs ``(q_i, d_i)`` the loss is

    L = -1/B sum_i log( exp(s(q_i, d_i)) / sum_j exp(s(q_i, d_j)) ),    s(q, d) = (W E(q))^T E(d),

so every other pair's document is a negative. Here a positive pair is two wordings of one *training*
fact (its prompt in one pretraining template, its sentence in another); no held-out fact and no
question template of the chapter is used, so the retriever is "off the shelf" for the chapter's task.
Only the query map ``W`` of :class:`DenseRetriever` trains (the LM and the document index are frozen),
and since ``E`` is frozen its outputs are computed once: training takes seconds. Training without a
temperature makes the scores' scale the one the loss asks for, so ``softmax(s)`` is sharp where the
retriever is sure (REPLUG's ensemble weights).

Chapter: notebooks/06b_retrieval_augmented.ipynb (REPLUG with a trained retriever).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import checks
from .rag import DenseRetriever, mean_hidden


def in_batch_contrastive_loss(query_embeddings: torch.Tensor, document_embeddings: torch.Tensor) -> torch.Tensor:
    """``-1/B sum_i log softmax_j(q_i^T d_j)_i``: row ``i`` of each ``(B, d)`` input is a positive pair,
    every other row's document a negative (Contriever's in-batch negatives)."""
    checks.tensor(query_embeddings, "query_embeddings", dim=2, floating=True)
    checks.same_shape(document_embeddings, query_embeddings, "document_embeddings", "query_embeddings")
    scores = query_embeddings @ document_embeddings.T  # (B, B): s(q_i, d_j)
    labels = torch.arange(len(scores), device=scores.device)  # the positive of row i is column i
    return nn.functional.cross_entropy(scores, labels)


def train_contrastive(retriever: DenseRetriever, pairs: Sequence[tuple[str, str]],
                      steps: int = 300, batch_size: int = 64, lr: float = 1e-3,
                      seed: int = 0) -> list[float]:
    """Train ``retriever.query_map`` on ``(query, positive document)`` pairs with
    in-batch negatives (:func:`in_batch_contrastive_loss`); return every step's loss.

    The frozen encoder's embeddings of all pairs are computed once; each step draws
    a batch of distinct pairs from a generator seeded by ``seed`` (the global random
    streams are not touched). The retriever keeps the train/eval mode it came with;
    its document index does not change.
    """
    if not isinstance(retriever, DenseRetriever):
        raise TypeError("retriever must be a DenseRetriever, "
                        f"got {type(retriever).__name__}")
    if (isinstance(pairs, (str, tuple)) or len(pairs) < 2
            or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs)):
        raise ValueError("pairs must be a list of at least 2 (query, document) "
                         f"tuples, got {pairs!r:.60}")
    steps = checks.positive_int(steps, "steps")
    batch_size = checks.integer(batch_size, "batch_size", minimum=2)
    lr, seed = checks.positive(lr, "lr"), checks.integer(seed, "seed")
    queries = checks.texts([q for q, _ in pairs], "queries")
    documents = checks.texts([d for _, d in pairs], "documents")
    enc, tok = retriever.encoder, retriever.tokenizer
    q_emb = mean_hidden(enc, tok, queries)  # (P, d), frozen E(q)
    d_emb = mean_hidden(enc, tok, documents)  # (P, d), frozen E(d)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(retriever.query_map.parameters(), lr=lr,
                                  weight_decay=0.0)
    batch_size = min(batch_size, len(pairs))
    losses, was_training = [], retriever.training
    retriever.train()
    for _ in range(steps):
        idx = torch.randperm(len(pairs), generator=generator)[:batch_size]
        idx = idx.to(q_emb.device)  # B distinct pairs; the others' documents: negatives
        loss = in_batch_contrastive_loss(retriever.query_map(q_emb[idx]), d_emb[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    retriever.train(was_training)
    return losses
