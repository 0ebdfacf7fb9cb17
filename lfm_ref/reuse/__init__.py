"""Part III, model reuse: combining trained models (ensembles, weight merging, mode connectivity, experts)."""
from .averaging import adapter_soup, domain_similarity, fedavg, greedy_soup
from .connectivity import (BezierCurve, barrier, interpolate, linear_chain, linear_path, mlp_permutation_spec,
                           ot_fusion, permute_state_dict, weight_matching, zipit)
from .ensembles import (BatchEnsemble, BatchEnsembleLinear, LinearizedModel, StackingCombiner, average_probabilities,
                        majority_vote, member_logits, tangent_compose)
from .experts import WeightEnsemblingMLP, train_routers, weight_ensembling_moe
from .merging import (adamerging, add_task_vectors, check_state_dicts, dare, dare_merge, diagonal_fisher,
                      fisher_merge, gram_matrices, merge, prediction_entropy, regmean, task_arithmetic, task_vector, ties_disjoint_mean,
                      ties_merge, trim, weighted_average)

__all__ = ["adapter_soup", "domain_similarity", "BezierCurve", "barrier", "interpolate", "linear_chain", "linear_path", "mlp_permutation_spec",
           "ot_fusion", "permute_state_dict", "weight_matching", "zipit", "BatchEnsemble", "BatchEnsembleLinear",
           "LinearizedModel", "StackingCombiner", "average_probabilities", "majority_vote", "member_logits",
           "tangent_compose", "fedavg", "greedy_soup", "WeightEnsemblingMLP", "train_routers", "weight_ensembling_moe", "prediction_entropy", "adamerging", "add_task_vectors", "check_state_dicts", "dare", "dare_merge",
           "diagonal_fisher", "fisher_merge", "gram_matrices", "merge", "regmean", "task_arithmetic", "task_vector",
           "ties_disjoint_mean", "ties_merge", "trim", "weighted_average"]
