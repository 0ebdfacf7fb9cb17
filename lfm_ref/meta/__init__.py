"""Part IV, meta-learning: learning to learn from few examples, with data or from a zoo of models.

Chapter 14 (notebooks/14_learning_to_learn.ipynb): episodes and their samplers (``episodes``), MAML,
first-order MAML, ANIL and Reptile over one ``torch.func`` inner loop (``maml``), prototypical networks
(``protonets``) and the few-shot evaluator with the pretrained baselines (``evaluate``). The few-shot
image classes are :mod:`lfm_ref.data.few_shot`.

Chapter 15 (notebooks/15_data_free_meta_learning.ipynb): data-free meta-learning from a zoo of task
models (``data_free``): white-box inversion into pseudo tasks, fusion, and black-box inversion and
distillation through query-counted APIs.
"""
from .data_free import (
    DistilledTasks,
    PseudoTasks,
    TaskModel,
    fuse_zoo,
    invert_api,
    invert_zoo,
    meta_train,
    protonet_distill_objective,
    protonet_predict,
    robust_fusion_weights,
    train_task_zoo,
)
from .episodes import Episode, EpisodeSampler, SinusoidTasks
from .evaluate import (
    FeaturesWithHead,
    episode_accuracies,
    few_shot_accuracy,
    finetune_logits,
    mean_and_interval,
    nearest_neighbour_logits,
)
from .maml import (
    SineNet,
    adapt_batch,
    adapted_query_outputs,
    anil_objective,
    inner_loop,
    maml_objective,
    mse_over_steps,
    parameter_names,
    query_outputs,
    reptile_objective,
    task_loss,
)
from .protonets import protonet_episode_logits, protonet_logits, protonet_objective, prototypes

__all__ = [
    "DistilledTasks", "PseudoTasks", "TaskModel", "fuse_zoo", "invert_api", "invert_zoo", "meta_train",
    "protonet_distill_objective", "protonet_predict", "robust_fusion_weights", "train_task_zoo",
           "Episode", "EpisodeSampler", "SinusoidTasks", "SineNet", "task_loss", "inner_loop", "adapt_batch",
           "query_outputs", "maml_objective", "anil_objective", "reptile_objective", "adapted_query_outputs",
           "mse_over_steps", "parameter_names", "prototypes", "protonet_logits", "protonet_objective",
           "protonet_episode_logits", "few_shot_accuracy", "episode_accuracies", "mean_and_interval",
           "nearest_neighbour_logits", "FeaturesWithHead", "finetune_logits"]
