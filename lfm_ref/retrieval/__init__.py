"""Part I, database augmentation: what the model can look up (kNN-LM, dense retrieval, RAG, REPLUG, REALM).

Chapters: notebooks/06a_knn_lm.ipynb (kNN-LM, the cache) and notebooks/06b_retrieval_augmented.ipynb
(dense retrieval, a contrastive retriever, RAG, REPLUG, UPRISE, REALM).
"""
from .contrastive import in_batch_contrastive_loss, train_contrastive
from .knn_lm import Datastore, build_datastore, knn_lm_probs
from .rag import (
    DenseRetriever,
    answer_log_probs,
    answer_with_retrieval,
    evaluate_retrieval,
    mean_hidden,
    replug_log_probs,
    replug_lsr_loss,
    retrieval_objective,
    uprise_loss,
    with_documents,
)

__all__ = ["Datastore", "build_datastore", "knn_lm_probs", "DenseRetriever", "answer_log_probs",
           "answer_with_retrieval", "evaluate_retrieval", "mean_hidden", "replug_log_probs",
           "replug_lsr_loss", "retrieval_objective", "uprise_loss", "with_documents",
           "in_batch_contrastive_loss", "train_contrastive"]
