"""Part III, model reuse: combining trained models (ensembles, weight merging, mode connectivity, experts)."""
from .averaging import fedavg, greedy_soup
from .experts import WeightEnsemblingMLP, train_routers, weight_ensembling_moe
from .merging import (adamerging, add_task_vectors, check_state_dicts, dare, dare_merge, diagonal_fisher,
                      fisher_merge, gram_matrices, merge, prediction_entropy, regmean, task_arithmetic, task_vector, ties_disjoint_mean,
                      ties_merge, trim, weighted_average)

__all__ = ["fedavg", "greedy_soup", "WeightEnsemblingMLP", "train_routers", "weight_ensembling_moe", "prediction_entropy", "adamerging", "add_task_vectors", "check_state_dicts", "dare", "dare_merge",
           "diagonal_fisher", "fisher_merge", "gram_matrices", "merge", "regmean", "task_arithmetic", "task_vector",
           "ties_disjoint_mean", "ties_merge", "trim", "weighted_average"]
