"""Bad inputs to the shared core (checks, state dicts, black-box access, the notebook kit); collected by
``test_strict_inputs.py``."""
import torch
from torch import nn

from lfm_ref import blackbox, book, checks, state_dicts
from lfm_ref.utils import eval_mode

_linear = nn.Linear(3, 2)
_sd = _linear.state_dict()

CASES = [
    ("checks-int-given-str", lambda: checks.positive_int("8", "r"), TypeError, r"r must be an int, got str \('8'\)"),
    ("checks-int-given-bool", lambda: checks.positive_int(True, "steps"), TypeError, "steps must be an int, got bool"),
    ("checks-int-below-minimum", lambda: checks.positive_int(0, "steps"), ValueError,
     "steps must be an int >= 1, got 0"),
    ("checks-number-given-str", lambda: checks.number("16", "alpha"), TypeError,
     r"alpha must be a number \(int or float\), got str \('16'\)"),
    ("checks-probability-out-of-range", lambda: checks.probability(1.5, "p"), ValueError,
     r"p must lie in \[0.0, 1.0\]"),
    ("checks-class-index-too-large", lambda: checks.class_indices(torch.tensor([0, 10]), "y", 10), ValueError,
     r"y must hold class indices in \[0, 10\), got values from 0 to 10"),
    ("checks-same-shape-broadcastable", lambda: checks.same_shape(torch.ones(1, 3), torch.ones(2, 3), "f", "w"),
     ValueError, r"f must have the shape of w, \(2, 3\), got \(1, 3\)"),
    ("checks-texts-given-a-string", lambda: checks.texts("Paris"), TypeError, "texts must be a list of strings"),
    ("state-dicts-given-a-model", lambda: state_dicts.check_state_dicts([_linear]), TypeError,
     r"pass model.state_dict\(\) rather than the model"),
    ("interpolate-alpha-str", lambda: state_dicts.interpolate(_sd, _sd, "0.5"), TypeError, "alpha must be a number"),
    ("snapshot-of-a-state-dict", lambda: state_dicts.snapshot(_sd), TypeError, r"pass the model, not its state_dict"),
    ("classifier-api-unknown-output", lambda: blackbox.ClassifierAPI(_linear, output="logits"), ValueError,
     r"output must be one of \['probs', 'label'\], got 'logits'"),
    ("classifier-api-given-list", lambda: blackbox.ClassifierAPI(_linear)([[0.0, 1.0, 2.0]]), TypeError,
     "x must be a torch.Tensor, got list"),
    ("zeroth-order-directions-zero", lambda: blackbox.zeroth_order_grad(lambda x: x.sum(1), torch.ones(2, 3), 0),
     ValueError, "directions must be an int >= 1"),
    ("seed-table-given-a-list", lambda: book.seed_table([0.9, 0.8]), TypeError, "results must be a non-empty dict"),
    ("show-given-a-string", lambda: book.show("fit"), TypeError, "show\\(\\) displays a function, method or class"),
    ("eval-mode-given-state-dict", lambda: eval_mode(_sd).__enter__(), TypeError,
     "model must be a torch.nn.Module, got OrderedDict"),
]
