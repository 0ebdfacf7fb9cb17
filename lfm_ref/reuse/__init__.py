"""Part III, model reuse: combining trained models (ensembles, weight merging, mode connectivity, experts).

Every merge is reachable through one call, :func:`merge` (``merge(method, pretrained, finetuned, *,
data=None, **hparams)``), over the registry :data:`METHODS`.
"""
from ..state_dicts import check_state_dicts, interpolate, task_vector
from .averaging import adapter_soup, domain_similarity, fedavg, greedy_soup
from .connectivity import (
                           BezierCurve,
                           barrier,
                           linear_chain,
                           linear_path,
                           mlp_permutation_spec,
                           ot_fusion,
                           permute_state_dict,
                           weight_matching,
                           zipit,
)
from .ensembles import (
                           BatchEnsemble,
                           BatchEnsembleConv2d,
                           BatchEnsembleLinear,
                           LinearizedModel,
                           StackingCombiner,
                           average_probabilities,
                           batch_ensemble_objective,
                           majority_vote,
                           member_logits,
                           stacking_objective,
                           tangent_compose,
)
from .experts import WeightEnsemblingMLP, train_routers, weight_ensembling_moe
from .merging import (
                           add_task_vectors,
                           dare,
                           dare_merge,
                           fisher_merge,
                           kept_entries,
                           merge_by_key,
                           task_arithmetic,
                           ties_disjoint_mean,
                           ties_merge,
                           trim,
                           weighted_average,
)
from .merging_with_data import adamerging, diagonal_fisher, gram_matrices, prediction_entropy, regmean
from .methods import METHODS, MergeMethod, merge

__all__ = ["METHODS", "BatchEnsemble", "BatchEnsembleConv2d", "BatchEnsembleLinear", "BezierCurve", "LinearizedModel",
           "MergeMethod",
           "StackingCombiner", "WeightEnsemblingMLP", "adamerging", "adapter_soup", "add_task_vectors",
           "average_probabilities", "barrier", "batch_ensemble_objective", "check_state_dicts", "dare", "dare_merge",
           "diagonal_fisher", "domain_similarity", "fedavg", "fisher_merge", "gram_matrices", "greedy_soup",
           "interpolate", "kept_entries", "linear_chain", "linear_path", "majority_vote", "member_logits", "merge",
           "merge_by_key", "mlp_permutation_spec", "ot_fusion", "permute_state_dict", "prediction_entropy",
           "regmean", "stacking_objective", "tangent_compose", "task_arithmetic", "task_vector",
           "ties_disjoint_mean", "ties_merge", "train_routers", "trim", "weight_ensembling_moe", "weight_matching",
           "weighted_average", "zipit"]
