"""The noisy fact corpus of chapter 9's sequence-level KD (lfm_ref.data.noisy_facts)."""
import random
from collections import Counter

import pytest

from lfm_ref.data import FactWorld
from lfm_ref.data.noisy_facts import noisy_corpus


@pytest.fixture(scope="module")
def world():
    return FactWorld(seed=0)


def test_noise_rate_and_the_true_object_is_the_mode(world):
    facts = [f for f in world.split("train") if f.relation in ("born_in", "profession")][:100]
    state = random.getstate()
    sentences, prompts = noisy_corpus(world, facts, repeats=20, noise=0.25, seed=3)
    assert random.getstate() == state  # the global stream is untouched
    assert len(sentences) == len(prompts) == 20 * len(facts)
    objects = [s.split()[-2] for s in sentences]
    truth = [f.object for f in facts for _ in range(20)]
    wrong = sum(a != b for a, b in zip(objects, truth)) / len(truth)
    assert 0.2 < wrong < 0.3
    for j, fact in enumerate(facts):  # the mode of every fact's sentences is its true object
        counts = Counter(objects[20 * j:20 * (j + 1)])
        assert counts.most_common(1)[0][0] == fact.object
    for sentence, prompt in zip(sentences, prompts):  # each prompt is its sentence up to the object
        assert sentence.startswith(prompt + " ")
    assert noisy_corpus(world, facts, repeats=20, noise=0.25, seed=3) == (sentences, prompts)


def test_no_noise_is_the_clean_corpus(world):
    facts = world.split("train")[:30]
    sentences, _ = noisy_corpus(world, facts, repeats=3, noise=0.0)
    assert set(sentences) <= set(world.corpus("train"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(world="w"), TypeError, "world must be a FactWorld"),
    (dict(facts=[]), ValueError, "facts"),
    (dict(facts=["x"]), TypeError, "facts must be a list of Fact"),
    (dict(repeats=0), ValueError, "repeats"),
    (dict(noise=0.5), ValueError, "noise"),
    (dict(noise="0.1"), TypeError, "noise"),
    (dict(seed=1.5), TypeError, "seed"),
])
def test_bad_inputs(world, kwargs, error, match):
    args = dict(world=world, facts=world.split("train")[:3])
    args.update(kwargs)
    with pytest.raises(error, match=match):
        noisy_corpus(**args)
