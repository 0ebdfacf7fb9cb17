"""Bad inputs to Part II, model distillation (lfm_ref.distill); collected by ``test_strict_inputs.py``.

Each case is a mistake a reader could make: a number given as a string, a temperature of 0, the logits of two
models that do not predict the same classes, labels outside the classes, a model where a tensor goes, a
data-free run of zero steps.
"""
from functools import lru_cache

import torch
from torch import nn

from lfm_ref.blackbox import ClassifierAPI
from lfm_ref.distill import (
    Cohort,
    Distillation,
    Generator,
    HintRegressor,
    bn_statistics_loss,
    born_again,
    dafl,
    dafl_losses,
    deep_inversion,
    dfad,
    dfme,
    discrepancy,
    kd_loss,
    kd_objective,
    mutual_learning_loss,
    rkd_loss,
    smaller_gpt2,
    teacher_corpus,
    token_kd_loss,
)
from lfm_ref.zoo.models import TinyCNN, TinyMLP

S, T, Y = torch.zeros(4, 10), torch.ones(4, 10), torch.tensor([0, 1, 2, 3])


@lru_cache(maxsize=None)
def _cnn():
    torch.manual_seed(0)
    return TinyCNN(width=4).eval()


@lru_cache(maxsize=None)
def _gpt():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=2, n_head=2))


def _data_free(method, **kwargs):
    teacher, student, generator = _cnn(), TinyCNN(width=4), Generator(latent_dim=4, width=4)
    if method == "dafl":
        return dafl(teacher, student, generator, "features", **kwargs)
    return dfad(teacher, student, generator, **kwargs)


CASES = [
    # ----- response-based KD (chapter 7)
    ("distill-kd-alpha-str", lambda: kd_loss(S, T, Y, alpha="0.5"), TypeError,
     r"alpha must be a number \(int or float\), got str \('0.5'\)"),
    ("distill-kd-temperature-zero", lambda: kd_loss(S, T, temperature=0), ValueError,
     r"temperature must lie in \(0.0, inf\], got 0.0"),
    ("distill-kd-temperature-negative", lambda: kd_objective(None, temperature=-2.0), ValueError,
     r"temperature must lie in \(0.0, inf\], got -2.0"),
    ("distill-kd-class-counts-differ", lambda: kd_loss(torch.zeros(4, 5), T), ValueError,
     "the student predicts 5 classes and the teacher 10"),
    ("distill-kd-batch-sizes-differ", lambda: kd_loss(torch.zeros(3, 10), T), ValueError,
     r"must come from the same inputs, got shapes \(3, 10\) and \(4, 10\)"),
    ("distill-kd-label-out-of-range", lambda: kd_loss(S, T, torch.tensor([0, 1, 2, 10]), alpha=0.5), ValueError,
     r"targets must hold class indices in \[0, 10\), got values from 0 to 10"),
    ("distill-kd-logits-as-list", lambda: kd_loss(S.tolist(), T), TypeError,
     "student_logits must be a torch.Tensor, got list"),
    ("distill-kd-objective-given-state-dict", lambda: kd_objective(_cnn().state_dict()), TypeError,
     r"teacher must be a torch.nn.Module, got OrderedDict .*pass the model, not its state_dict\(\)"),
    ("distill-born-again-generations-str",
     lambda: born_again(TinyMLP, TinyMLP(), (torch.rand(4, 1, 8, 8), Y), generations="2"), TypeError,
     r"generations must be an int, got str \('2'\)"),
    # ----- feature, relation and online distillation (chapter 7)
    ("distill-rkd-weight-str", lambda: rkd_loss(torch.rand(4, 3), torch.rand(4, 3), distance_weight="25"),
     TypeError, "distance_weight must be a number"),
    ("distill-rkd-embeddings-as-array", lambda: rkd_loss(torch.rand(4, 3).numpy(), torch.rand(4, 3)), TypeError,
     "student must be a torch.Tensor, got ndarray"),
    ("distill-hint-regressor-width-str", lambda: HintRegressor("32", 64), TypeError,
     r"student_dim must be an int, got str \('32'\)"),
    ("distill-distillation-given-state-dict", lambda: Distillation(TinyMLP(), _cnn().state_dict()), TypeError,
     "teacher must be a torch.nn.Module, got OrderedDict"),
    ("distill-mutual-labels-out-of-range",
     lambda: mutual_learning_loss(torch.zeros(2, 4, 10), torch.tensor([0, 1, 2, 12])), ValueError,
     r"targets must hold class indices in \[0, 10\)"),
    ("distill-mutual-unstacked-logits", lambda: mutual_learning_loss(S, Y), ValueError,
     r"logits must have 3 dimensions, got shape \(4, 10\)"),
    ("distill-cohort-given-a-function", lambda: Cohort([TinyMLP(), lambda x: x]), TypeError,
     r"peers\[1\] must be a torch.nn.Module, got function"),
    # ----- data-free distillation (chapters 8a, 8b)
    ("distill-deep-inversion-steps-zero", lambda: deep_inversion(_cnn(), Y, (1, 8, 8), steps=0), ValueError,
     "steps must be an int >= 1, got 0"),
    ("distill-deep-inversion-float-targets", lambda: deep_inversion(_cnn(), Y.float(), (1, 8, 8), steps=1),
     TypeError, "targets must be an integer tensor, got dtype torch.float32"),
    ("distill-deep-inversion-target-out-of-range",
     lambda: deep_inversion(_cnn(), torch.tensor([0, 10]), (1, 8, 8), steps=1), ValueError,
     r"targets must hold class indices in \[0, 10\), got values from 0 to 10"),
    ("distill-deep-inversion-shape-int", lambda: deep_inversion(_cnn(), Y, 64, steps=1), TypeError,
     r"shape must be one input's shape as a tuple such as \(1, 8, 8\), got 64"),
    ("distill-dafl-batch-size-str", lambda: _data_free("dafl", steps=1, batch_size="64"), TypeError,
     r"batch_size must be an int, got str \('64'\)"),
    ("distill-dafl-steps-zero", lambda: _data_free("dafl", steps=0, batch_size=4), ValueError,
     "steps must be an int >= 1, got 0"),
    ("distill-dfad-steps-zero", lambda: _data_free("dfad", steps=0, batch_size=4), ValueError,
     "steps must be an int >= 1, got 0"),
    ("distill-dfad-lr-str", lambda: _data_free("dfad", steps=1, batch_size=4, lr_student="3e-3"), TypeError,
     r"lr_student must be a number \(int or float\), got str \('3e-3'\)"),
    ("distill-dfme-given-the-model", lambda: dfme(_cnn(), TinyCNN(width=4), Generator(), steps=1), TypeError,
     "api must be a lfm_ref.blackbox.ClassifierAPI answering probabilities"),
    ("distill-dfme-label-api", lambda: dfme(ClassifierAPI(_cnn(), output="label"), TinyCNN(width=4), Generator(),
                                            steps=1), TypeError, r"with output='label'"),
    ("distill-generator-sample-float", lambda: Generator().sample(2.5), TypeError, "n must be an int, got float"),
    ("distill-bn-loss-no-batchnorm", lambda: bn_statistics_loss(nn.Linear(3, 2), torch.zeros(2, 3)), ValueError,
     "Linear has no BatchNorm layer"),
    ("distill-dafl-losses-rows-differ", lambda: dafl_losses(S, torch.zeros(3, 8)), ValueError,
     "must come from the same batch, got 4 and 3 rows"),
    ("distill-discrepancy-shapes-differ", lambda: discrepancy(torch.zeros(3, 10), T), ValueError,
     r"student_logits must have the shape of teacher_logits, \(4, 10\), got \(3, 10\)"),
    # ----- language models (chapter 9)
    ("distill-token-kd-vocab-differs",
     lambda: token_kd_loss(torch.zeros(2, 5, 16), torch.zeros(2, 5, 12), torch.zeros(2, 5, dtype=torch.long)),
     ValueError, "do the models share a"),
    ("distill-token-kd-label-out-of-vocab",
     lambda: token_kd_loss(torch.zeros(1, 3, 16), torch.zeros(1, 3, 16), torch.tensor([[1, 2, 16]])), ValueError,
     r"labels must hold class indices in \[0, 16\), got values from 2 to 16"),
    ("distill-token-kd-float-labels",
     lambda: token_kd_loss(torch.zeros(1, 3, 16), torch.zeros(1, 3, 16), torch.zeros(1, 3)), TypeError,
     "labels must be an integer tensor, got dtype torch.float32"),
    ("distill-teacher-corpus-prompt-string",
     lambda: teacher_corpus(_gpt(), None, prompts="The capital of France is"), TypeError,
     r"prompts must be a list of strings, got str \('The capital of France is'\)"),
    ("distill-teacher-corpus-n-str", lambda: teacher_corpus(_gpt(), None, n="40"), TypeError,
     r"n must be an int, got str \('40'\)"),
    ("distill-smaller-gpt2-n-layer-str", lambda: smaller_gpt2(_gpt(), n_layer="1"), TypeError,
     r"n_layer must be an int, got str \('1'\)"),
    # chapter 7, section 4: batched seeds, augmentation, digit pairs
    ("distill-independent-objective-not-callable", lambda: _independent()("ce"), TypeError,
     "loss_fn must be a function"),
    ("distill-independent-objective-needs-a-cohort", lambda: _independent()()(TinyMLP(), _xy()), TypeError,
     "trains a Cohort"),
    ("distill-born-again-augment-not-callable", lambda: born_again(TinyMLP, TinyMLP(), _xy(), augment=3), TypeError,
     "augment must be a function"),
    ("distill-born-again-loss-fn-given", lambda: born_again(TinyMLP, TinyMLP(), _xy(), loss_fn=None), TypeError,
     "sets fit's loss_fn itself"),
    ("distill-shift-and-noise-not-images", lambda: _augment().shift_and_noise(torch.rand(8, 64)), ValueError, "x must"),
    ("distill-shift-and-noise-shift-too-large", lambda: _augment().shift_and_noise(torch.rand(2, 1, 8, 8), shift=4),
     ValueError, "shift must be smaller"),
    ("distill-shift-and-noise-negative-noise", lambda: _augment().shift_and_noise(torch.rand(2, 1, 8, 8), noise=-1),
     ValueError, "noise"),
    ("distill-shift-and-noise-generator-not-a-generator",
     lambda: _augment().shift_and_noise(torch.rand(2, 1, 8, 8), generator=0), TypeError, "generator must be"),
    ("distill-with-augmentation-augment-not-callable", lambda: _augment().with_augmentation(None, "shift"), TypeError,
     "augment must be a function"),
    ("distill-with-augmentation-stored-logits", lambda: _augment().with_augmentation(None, lambda x: x)(
        TinyMLP(), (*_xy(), torch.rand(4, 10))), ValueError, "teacher_logits"),
    ("distill-digit-pairs-bad-split", lambda: _augment().digit_pairs("val"), ValueError, "unknown split"),
    ("distill-digit-pairs-n-zero", lambda: _augment().digit_pairs("train", 0), ValueError, "n must"),
]


def _independent():
    from lfm_ref.distill import independent_objective
    return independent_objective


def _augment():
    from lfm_ref.data import augment
    return augment


def _xy():
    return torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
