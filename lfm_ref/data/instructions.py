"""Procedurally generated instruction templates for the fact world: FLAN's task-count ablation at tiny scale.

FLAN (Wei et al., 2022, "Finetuned Language Models Are Zero-Shot Learners", ICLR; arXiv:2109.01652,
Figure 6) shows that held-out performance rises with the number of instruction clusters tuned on. The
part of that claim that needs no scale is "more varied instructions, better transfer to unseen ones";
testing it needs many instruction phrasings. Each template here is built from word slots: an opening
(``"Question :"``, ``"Task :"``, ...), a request (``"name the"``, ``"what is the"``, ...), a paraphrase of
the relation (``"birthplace of"``, ``"town of"``, ...) and a closing (``"? Answer :"``, ...), so that a
held-out template combines known words in an unseen way. No template is ever part of TinyGPT's
pretraining (chapter 0), and the object is always the next word after the template.

Chapter: notebooks/05_instruction_tuning.ipynb.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from .. import checks
from .facts import RELATIONS, Fact

# every slot word is in the fact world's word-level vocabulary (FactWorld.tokenizer), so no word is <unk>
OPENINGS = ("Question :", "Task :", ":", "")
REQUESTS = ("name the", "what is the", "the", "which is the")
RELATION_WORDS: dict[str, tuple[str, str]] = {
    "born_in": ("birthplace of", "town of"),
    "profession": ("job of", "trade of"),
    "country": ("country of", "country of the city"),
    "language": ("language of", "main language of"),
}
CLOSINGS = ("? Answer :", ". Answer :", "?", ":")
GRID_SIZE = len(OPENINGS) * len(REQUESTS) * 2 * len(CLOSINGS)


def instruction_templates(n: int = 32, seed: int = 0) -> list[dict[str, str]]:
    """``n`` distinct instruction templates (at most ``GRID_SIZE``, 128), drawn
    without replacement from the slot grid.

    Each template is a dict ``{relation: "... {s} ..."}`` with the same opening,
    request, paraphrase slot and closing for every relation, so a template is one
    "task phrasing" across the four relations; ``{s}`` is the subject and the answer
    follows the text.

    >>> instruction_templates(2)[0]["born_in"]
    'Task : name the town of {s} . Answer :'  # for example
    """
    grid = list(itertools.product(OPENINGS, REQUESTS, range(2), CLOSINGS))
    n = checks.integer(n, "n", minimum=1)
    if n > len(grid):
        raise ValueError(f"n must be an int <= {len(grid)} (the slot grid's size), "
                         f"got {n}")
    picked = random.Random(checks.integer(seed, "seed")).sample(grid, n)
    return [{rel: f"{opening} {request} {RELATION_WORDS[rel][k]} {{s}} {closing}"
             .strip() for rel in RELATIONS}
            for opening, request, k, closing in picked]


def instruction_pairs(facts: Sequence[Fact], templates: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """``(prompt, answer)`` for every fact in every template (facts outer, templates inner)."""
    if isinstance(templates, dict) or not isinstance(templates, Sequence) or not all(
            isinstance(t, dict) and set(t) >= set(RELATIONS) for t in templates):
        raise TypeError("templates must be a list of {relation: template} dicts (instruction_templates), "
                        f"got {type(templates).__name__}")
    if not isinstance(facts, Sequence) or not all(isinstance(f, Fact) for f in facts):
        raise TypeError(f"facts must be a list of Fact, got {type(facts).__name__}")
    if not facts or not templates:
        raise ValueError(f"facts and templates must be non-empty, got {len(facts)} facts and "
                         f"{len(templates)} templates")
    return [(t[f.relation].format(s=f.subject), f.object) for f in facts for t in templates]
