"""Part I, database augmentation: what the model can look up (kNN-LM, dense retrieval, RAG, REPLUG, REALM)."""
from .knn_lm import Datastore, build_datastore, knn_lm_probs
from .rag import (DenseRetriever, answer_log_probs, mean_hidden, reading_pairs, replug_log_probs, replug_lsr_loss,
                  uprise_loss, with_documents)

__all__ = ["Datastore", "build_datastore", "knn_lm_probs", "DenseRetriever", "answer_log_probs", "mean_hidden", "reading_pairs",
           "replug_log_probs", "replug_lsr_loss", "uprise_loss", "with_documents"]
