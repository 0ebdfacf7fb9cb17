"""Bad inputs to Part III, model reuse (merging, ensembles, soups, connectivity); collected by
``test_strict_inputs.py``."""
import functools

import torch
from torch import nn

from lfm_ref.reuse import (
    BezierCurve,
    StackingCombiner,
    adamerging,
    adapter_soup,
    average_probabilities,
    dare,
    dare_merge,
    diagonal_fisher,
    fedavg,
    fisher_merge,
    gram_matrices,
    merge,
    regmean,
    task_arithmetic,
    ties_merge,
    train_routers,
    weight_ensembling_moe,
    weighted_average,
    zipit,
)


@functools.lru_cache(maxsize=None)
def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _sd():
    return _model().state_dict()


def _fts():
    return [{k: v + 0.1 for k, v in _sd().items()} for _ in range(2)]


def _broadcastable_fishers():
    # a (1, 3) Fisher for a (4, 3) weight broadcasts silently in arithmetic: it must be refused
    fishers = [{k: torch.ones_like(v) for k, v in sd.items()} for sd in _fts()]
    fishers[1]["0.weight"] = torch.ones(1, 3)
    return fisher_merge(_fts(), fishers)


_x = torch.rand(5, 3)


def _vit():
    from lfm_ref.zoo.models import TinyViT

    torch.manual_seed(0)
    return TinyViT(dim=16, depth=1, heads=2)


def _moes():
    vit = _vit()
    sd = vit.state_dict()
    return weight_ensembling_moe([vit, _vit()], sd, [sd, sd], ["blocks.0.mlp"], dim=16)

CASES = [
    ("reuse-fisher-broadcastable-shape", _broadcastable_fishers, ValueError,
     r"fishers\[1\]\['0.weight'\] must have the shape of the parameter '0.weight', \(4, 3\), got \(1, 3\)"),
    ("reuse-fisher-given-a-tensor", lambda: fisher_merge(_fts(), [torch.ones(3), torch.ones(3)]), TypeError,
     r"fishers\[0\] must be a dict \{parameter name: tensor\}, got Tensor"),
    ("reuse-task-arithmetic-lam-str", lambda: task_arithmetic(_sd(), _fts(), lam="0.3"), TypeError,
     r"lam must be a number \(int or float\), got str \('0.3'\)"),
    ("reuse-task-arithmetic-pretrained-model", lambda: task_arithmetic(_model(), _fts()), TypeError,
     r"pretrained must be a state dict \(model.state_dict\(\)\), got Sequential"),
    ("reuse-ties-density-str", lambda: ties_merge(_sd(), _fts(), density="0.2"), TypeError,
     r"density \(the fraction of entries kept\) must be a number \(int or float\), got str"),
    ("reuse-ties-density-above-one", lambda: ties_merge(_sd(), _fts(), density=1.5), ValueError,
     r"density \(the fraction of entries kept\) must lie in \(0.0, 1.0\], got 1.5"),
    ("reuse-ties-unknown-scope", lambda: ties_merge(_sd(), _fts(), scope="layer"), ValueError,
     r"scope must be one of \['model', 'tensor'\], got 'layer'"),
    ("reuse-ties-unknown-rounding", lambda: ties_merge(_sd(), _fts(), rounding="ceil"), ValueError,
     r"rounding must be one of \['at_least_one', 'floor', 'floor_plus_one'\], got 'ceil'"),
    ("reuse-dare-drop-rate-one", lambda: dare({"w": torch.ones(3)}, p=1.0), ValueError,
     r"p \(the drop rate\) must lie in \[0.0, 1.0\), got 1.0"),
    ("reuse-dare-merge-seed-float", lambda: dare_merge(_sd(), _fts(), seed=0.5), TypeError,
     r"seed must be an int, got float \(0.5\)"),
    ("reuse-average-given-models", lambda: weighted_average([_model(), _model()]), TypeError,
     r"state dicts\[0\] must be a state dict \(model.state_dict\(\)\), got Sequential; pass model.state_dict\(\)"),
    ("reuse-average-weights-str", lambda: weighted_average(_fts(), weights="12"), TypeError,
     "weights must be a list of numbers, got str"),
    ("reuse-merge-unknown-method", lambda: merge("task_arithmetics", _sd(), _fts()), ValueError,
     "unknown merging method 'task_arithmetics'; did you mean 'task_arithmetic'"),
    ("reuse-merge-unknown-hyper-parameter", lambda: merge("task_arithmetic", _sd(), _fts(), alpha=0.3), TypeError,
     r"task_arithmetic takes the hyper-parameters \['lam'\], got \['alpha'\]"),
    ("reuse-merge-needs-data", lambda: merge("fisher", _sd(), [_model(), _model()]), ValueError,
     "fisher needs data: unlabeled inputs, one tensor per fine-tuned model"),
    ("reuse-merge-needs-models", lambda: merge("regmean", _sd(), _fts(), data=[_x, _x]), TypeError,
     r"regmean needs the fine-tuned models \(nn.Module\), not state dicts"),
    ("reuse-merge-finetuned-not-a-list", lambda: merge("ties", _sd(), _sd()), TypeError,
     "finetuned must be a list of state dicts or models, got OrderedDict"),
    ("reuse-regmean-off-diagonal-out-of-range", lambda: regmean([_model()], [_x], off_diagonal=1.5), ValueError,
     r"off_diagonal must lie in \[0.0, 1.0\], got 1.5"),
    ("reuse-regmean-inputs-one-tensor", lambda: regmean([_model()], _x), TypeError,
     "inputs must be a list of input tensors, one per model, got Tensor"),
    ("reuse-adamerging-steps-str", lambda: adamerging(_model(), _sd(), _fts(), [_x, _x], steps="100"), TypeError,
     r"steps must be an int, got str \('100'\)"),
    ("reuse-fisher-of-a-state-dict", lambda: diagonal_fisher(_sd(), _x), TypeError,
     "model must be a torch.nn.Module, got OrderedDict"),
    ("reuse-gram-inputs-a-list", lambda: gram_matrices(_model(), [[0.0, 1.0, 2.0]]), TypeError,
     "inputs must be a torch.Tensor, got list"),
    ("reuse-ensemble-logits-a-list", lambda: average_probabilities([[0.1, 0.9]]), TypeError,
     r"expected the members' logits stacked as a \(members, examples, classes\) tensor, got list"),
    ("reuse-stacking-members-str", lambda: StackingCombiner("3", 4), TypeError, r"n_members must be an int, got str"),
    ("reuse-adapter-soup-k-str", lambda: adapter_soup(_fts(), [0.1, 0.2], k="1"), TypeError,
     r"k must be an int, got str \('1'\)"),
    ("reuse-fedavg-zero-rounds", lambda: fedavg(_model(), [(_x, torch.zeros(5, dtype=torch.long))], 0, 1), ValueError,
     "rounds must be an int >= 1, got 0"),
    ("reuse-bezier-position-str", lambda: BezierCurve(_model(), _sd(), _fts()[0]).point("0.5"), TypeError,
     r"t must be a number \(int or float\), got str"),
    ("reuse-merge-finetuned-lacks-pretrained-keys",
     lambda: merge("task_arithmetic", {**_sd(), "extra.weight": torch.ones(2)}, _fts()), ValueError,
     r"finetuned\[0\] lacks keys of pretrained: \['extra.weight'\]"),
    ("reuse-regmean-keys-a-string", lambda: regmean([_model()], [_x], keys="0.weight"), TypeError,
     r"keys must be a collection of state-dict keys \(e.g. the encoder's\), got str"),
    ("reuse-fisher-unknown-key", lambda: diagonal_fisher(_model(), _x, keys=["9.weight"]), ValueError,
     r"keys must be keys of the model's parameters; it lacks \['9.weight'\]"),
    ("reuse-adamerging-model-count", lambda: adamerging([_model()], _sd(), _fts(), [_x, _x]), ValueError,
     r"got 1 models for 2 fine-tuned state dicts \(one per task\)"),
    ("reuse-adamerging-model-not-a-module", lambda: adamerging("mlp", _sd(), _fts(), [_x, _x]), TypeError,
     r"model must be a torch.nn.Module or a list of them \(one per task\), got str"),
    ("reuse-wemoe-task-model-count",
     lambda: weight_ensembling_moe([_vit()], _vit().state_dict(), [_vit().state_dict()] * 2, ["blocks.0.mlp"],
                                   dim=16), ValueError,
     r"got 1 task models for 2 fine-tuned state dicts \(one per task\)"),
    ("reuse-train-routers-inputs-one-tensor", lambda: train_routers(_moes(), torch.rand(4, 1, 8, 8), steps=1),
     TypeError, r"inputs must be a list of input tensors, one per task model \(2\), got Tensor"),
    ("reuse-train-routers-head-not-a-name",
     lambda: train_routers(_moes(), [torch.rand(4, 1, 8, 8)] * 2, steps=1, head=3), TypeError,
     r"head must be a module name \(a string\), got int"),
    ("reuse-zipit-separate-heads-str",
     lambda: zipit(*[nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(2)],
                   ["0", "2"], _x, separate_heads="yes"), TypeError, "separate_heads must be a bool, got str"),
]
