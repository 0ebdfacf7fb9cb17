"""lfm_ref: small, readable reference implementations for the book *Learning from Models*.

The shared core a chapter or a method imports:

- ``device``/``pin_threads``/``seed_everything``/``device_of``/``eval_mode`` (:mod:`lfm_ref.utils`);
- the one training loop ``fit`` and ``evaluate``/``predict`` (:mod:`lfm_ref.train`);
- input checks with one message style (:mod:`lfm_ref.checks`), state-dict helpers
  (:mod:`lfm_ref.state_dicts`), models behind an API (:mod:`lfm_ref.blackbox`), forward hooks
  (:mod:`lfm_ref.hooks`) and language-model helpers (:mod:`lfm_ref.lm`);
- the data (:mod:`lfm_ref.data`), the model zoo (:mod:`lfm_ref.zoo`), plots (:mod:`lfm_ref.plotting`)
  and the notebook kit (:mod:`lfm_ref.book`).

Methods live in sub-packages named after the survey's taxonomy (``tuning``, ``retrieval``, ``distill``,
``reuse``); a method imports the core, never another family's private helpers.
"""
from .train import evaluate, fit, predict
from .utils import count_parameters, device, pin_threads, seed_everything

__version__ = "0.1.0"
__all__ = ["count_parameters", "device", "evaluate", "fit", "pin_threads", "predict", "seed_everything", "__version__"]
