"""Bad inputs to chapter 15, data-free meta-learning (lfm_ref.meta.data_free); run by ``test_strict_inputs.py``."""
import torch
from torch import nn

from lfm_ref.blackbox import ClassifierAPI
from lfm_ref.meta.data_free import PseudoTasks, fuse_zoo, invert_api, invert_zoo, robust_fusion_weights, train_task_zoo
from lfm_ref.zoo.models import TinyCNN

X, Y = torch.rand(20, 1, 8, 8), torch.arange(20) % 4

CASES = [
    ("meta-df-zoo-way-too-large", lambda: train_task_zoo(X, Y, 2, n_way=5), ValueError,
     r"n_way must be between 2 and the 4 classes in y, got 5"),
    ("meta-df-zoo-length-mismatch", lambda: train_task_zoo(X, Y[:5], 2, n_way=2), ValueError,
     r"x and y must hold the same number of examples, got 20 and 5"),
    ("meta-df-fuse-keys", lambda: fuse_zoo([TinyCNN(5, 8), nn.Linear(2, 2)]), ValueError,
     r"fusing needs models of one architecture"),
    ("meta-df-fuse-weights", lambda: fuse_zoo([TinyCNN(5, 8)] * 2, weights=[1.0]), ValueError,
     r"weights must be 2 non-negative numbers"),
    ("meta-df-robust-radius", lambda: robust_fusion_weights([TinyCNN(5, 8)] * 2, -1.0), ValueError,
     r"radius must lie in \[0, inf\], got -1.0"),
    ("meta-df-robust-identical", lambda: robust_fusion_weights([TinyCNN(5, 8)] * 2, 0.5), ValueError,
     r"the models are identical"),
    ("meta-df-robust-state-dict", lambda: robust_fusion_weights([TinyCNN(5, 8).state_dict()], 0.5),
     TypeError, r"pass the model, not its state_dict"),
    ("meta-df-invert-zoo-not-taskmodel", lambda: invert_zoo([TinyCNN(5, 8)]), TypeError,
     r"zoo must be a list of TaskModel"),
    ("meta-df-invert-api-module", lambda: invert_api(TinyCNN(5, 8), 5), TypeError,
     r"api must be a lfm_ref.blackbox.ClassifierAPI"),
    ("meta-df-invert-api-labels", lambda: invert_api(ClassifierAPI(TinyCNN(5, 8), output="label"), 5),
     TypeError, r"answering probabilities"),
    ("meta-df-invert-api-way", lambda: invert_api(ClassifierAPI(TinyCNN(5, 8)), 3, steps=1), ValueError,
     r"the API answers 5 classes, but n_way=3"),
    ("meta-df-pseudo-ways", lambda: PseudoTasks([(X, Y), (X, Y % 2)]), ValueError,
     r"pseudo tasks must all have the same number of classes, got \[2, 4\]"),
]
