"""A noisy fact corpus: the multimodal references that sequence-level KD simplifies.

Kim & Rush (2016, "Sequence-Level Knowledge Distillation", EMNLP; arXiv:1606.07947) explain the gain of
sequence-level KD by the teacher's output being *simpler* than the references: a translation corpus
has many valid (and some wrong) targets per source, while the teacher's beam search returns one mode.
The fact world's corpus has one object per fact, so there is nothing to simplify. Here each fact is
written ``repeats`` times (in the pretraining templates) and each sentence states, with probability
``noise``, a *wrong* object drawn afresh, so the true object is the majority (the mode) and the wrong
ones are spread thin. A teacher trained on it puts its mode on the true object; its greedy completions
of the prompts are the seq-KD corpus.

Chapter: notebooks/09_distilling_language_models.ipynb (section 5).
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from .. import checks
from .facts import N_PRETRAIN_TEMPLATES, Fact, FactWorld


def noisy_corpus(world: FactWorld, facts: Sequence[Fact], repeats: int = 8, noise: float = 0.25,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """``(sentences, prompts)``: ``repeats`` sentences per fact in random pretraining templates, each
    with a wrong object (uniform over the relation's other objects, drawn per sentence) with
    probability ``noise``; ``prompts[i]`` is ``sentences[i]`` up to its object (what a teacher
    completes for sequence-level KD). Same ``seed``, same corpus; the global random streams are not
    touched."""
    if not isinstance(world, FactWorld):
        raise TypeError(f"world must be a FactWorld, got {type(world).__name__}")
    facts = checks.non_empty(facts, "facts")
    if not all(isinstance(f, Fact) for f in facts):
        raise TypeError("facts must be a list of Fact (from FactWorld.split), got "
                        f"{sorted({type(f).__name__ for f in facts})}")
    repeats = checks.positive_int(repeats, "repeats")
    noise = checks.number(noise, "noise", low=0.0, high=0.5, high_open=True)
    seed = checks.integer(seed, "seed")
    rng = random.Random(seed)
    sentences, prompts = [], []
    for fact in facts:
        others = [o for o in world.objects(fact.relation) if o != fact.object]
        for _ in range(repeats):
            template = rng.randrange(N_PRETRAIN_TEMPLATES)
            wrong = rng.random() < noise
            obj = rng.choice(others) if wrong else fact.object
            sentences.append(Fact(fact.subject, fact.relation, obj).sentence(template))
            prompts.append(fact.prompt(template))
    return sentences, prompts
