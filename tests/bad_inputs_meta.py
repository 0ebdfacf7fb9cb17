"""Bad inputs to Part IV, meta-learning (lfm_ref.meta); collected by ``test_strict_inputs.py``.

Each case is a mistake a reader could make: a support set missing a class, K larger than a class has
examples, an inner learning rate of 0, a query holding a class the support does not, a batch where a
single episode goes, labels given as floats.
"""
import torch
from torch import nn

from lfm_ref.data.few_shot import few_shot_classes
from lfm_ref.meta import (
    Episode,
    EpisodeSampler,
    SinusoidTasks,
    few_shot_accuracy,
    inner_loop,
    maml_objective,
    protonet_logits,
    prototypes,
    reptile_objective,
)

X, Y = torch.zeros(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])


def _small():
    x, y = torch.zeros(7, 2), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    return x, y


def _sine():
    return SinusoidTasks(5).batch(2, torch.Generator().manual_seed(0))


CASES = [
    ("meta-support-missing-a-class", lambda: Episode(X, torch.tensor([0, 0, 2, 2, 3, 3]), X, Y), ValueError,
     r"the support set has no example of class 1 \(an 4-way episode needs every class 0..3"),
    ("meta-support-missing-a-class-in-a-batch",
     lambda: Episode(X[None].repeat(2, 1, 1, 1, 1), torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1]]),
                     X[None].repeat(2, 1, 1, 1, 1), Y[None].repeat(2, 1)), ValueError,
     "the support set of task 1 has no example of class 2"),
    ("meta-support-missing-a-class-given-n-way", lambda: Episode(X, Y, X, Y, n_way=4), ValueError,
     "has no example of class 3"),
    ("meta-query-class-not-in-support", lambda: Episode(X, Y, X, torch.tensor([0, 1, 2, 3, 0, 1])), ValueError,
     r"query labels must be classes of the support \(0..2\), got labels from 0 to 3: query and support disagree"),
    ("meta-k-larger-than-a-class", lambda: EpisodeSampler(*_small(), n_way=2, k_shot=3, q_query=1), ValueError,
     r"k_shot \+ q_query = 3 \+ 1 = 4 is more than the 3 examples of class 1"),
    ("meta-k-larger-than-a-real-class",
     lambda: EpisodeSampler(*few_shot_classes("meta-test"), n_way=5, k_shot=200, q_query=15), ValueError,
     r"k_shot \+ q_query = 200 \+ 15 = 215 is more than the 1\d\d examples of class"),
    ("meta-n-way-more-than-classes", lambda: EpisodeSampler(*_small(), n_way=3, k_shot=1), ValueError,
     "n_way=3 is more than the 2 classes in y"),
    ("meta-sampler-float-labels", lambda: EpisodeSampler(torch.zeros(4, 2), torch.zeros(4), 2, 1), TypeError,
     "y must be an integer tensor, got dtype torch.float32"),
    ("meta-sampler-no-generator", lambda: EpisodeSampler(*_small(), 2, 1, 1).sample(0), TypeError,
     "generator must be a torch.Generator"),
    ("meta-inner-lr-zero", lambda: inner_loop(nn.Linear(1, 1), dict(nn.Linear(1, 1).named_parameters()),
                                              (torch.zeros(2, 1), torch.zeros(2, 1)), steps=1, lr=0.0), ValueError,
     r"lr must lie in \(0.0, inf\], got 0.0"),
    ("meta-inner-lr-negative", lambda: maml_objective(steps=1, lr=-0.01), ValueError,
     r"lr must lie in \(0.0, inf\], got -0.01"),
    ("meta-inner-steps-str", lambda: maml_objective(steps="1"), TypeError, r"steps must be an int, got str \('1'\)"),
    ("meta-reptile-zero-steps", lambda: reptile_objective(steps=0), ValueError, "steps must be an int >= 1, got 0"),
    ("meta-inner-loop-given-a-batch", lambda: inner_loop(nn.Linear(1, 1), dict(nn.Linear(1, 1).named_parameters()),
                                                         _sine(), 1, 0.01), ValueError,
     "inner_loop adapts to one task; pass episode.task"),
    ("meta-objective-given-one-episode", lambda: maml_objective()(nn.Linear(1, 1), _sine().task(0)), TypeError,
     "a meta-loss expects a batch of Episodes"),
    ("meta-adapt-unknown-parameter", lambda: maml_objective(adapt="classifier")(nn.Linear(1, 1), _sine()),
     ValueError, "adapt must name parameters of the model"),
    ("meta-episode-shapes-disagree", lambda: Episode(X[:4], Y, X, Y), ValueError,
     r"support_x must start with the support labels' dimensions \(6,\)"),
    ("meta-episode-mixed-targets", lambda: Episode(X, Y, X, Y.float()), TypeError,
     "support_y and query_y must both be integer labels or both float targets"),
    ("meta-prototypes-missing-class", lambda: prototypes(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]), 3),
     ValueError, "class 2 has no support example"),
    ("meta-protonet-embedding-sizes-differ", lambda: protonet_logits(torch.zeros(4, 3), torch.zeros(2, 5)),
     ValueError, "queries and prototypes must share the task dimension and embedding size"),
    ("meta-accuracy-wrong-logits", lambda: few_shot_accuracy(lambda e: torch.zeros(6, 2), Episode(X, Y, X, Y)),
     ValueError, r"query logits of shape \(6, 3\)"),
    ("meta-sinusoid-bad-interval", lambda: SinusoidTasks(5, amplitude=(5.0, 0.1)), ValueError,
     "amplitude must be \\(low, high\\) with low < high"),
    ("meta-few-shot-unknown-split", lambda: few_shot_classes("test"), ValueError,
     r"split must be one of \['meta-train', 'meta-test'\], got 'test'"),
]
