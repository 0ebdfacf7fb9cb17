"""lfm_ref: small, readable reference implementations for the book *Learning from Models*.

The shared parts a chapter imports: ``device``/``seed_everything`` (:mod:`lfm_ref.utils`), the one
training loop ``fit`` and evaluation helper ``evaluate`` (:mod:`lfm_ref.train`), the data
(:mod:`lfm_ref.data`), the model zoo (:mod:`lfm_ref.zoo`), language-model helpers (:mod:`lfm_ref.lm`)
and plots (:mod:`lfm_ref.plotting`). Methods live in sub-packages named after the survey's taxonomy.
"""
from .train import evaluate, fit, predict
from .utils import count_parameters, device, seed_everything

__version__ = "0.1.0"
__all__ = ["count_parameters", "device", "evaluate", "fit", "predict", "seed_everything", "__version__"]
