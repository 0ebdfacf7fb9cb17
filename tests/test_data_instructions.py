"""Generated instruction templates (chapter 5's FLAN task-count ablation): distinct, seeded, every word in
the fact world's vocabulary, the answer as the next word; bad inputs."""
import pytest

from lfm_ref.data import RELATIONS, FactWorld
from lfm_ref.data.facts import INSTRUCTION_FORMATS, TEMPLATES
from lfm_ref.data.instructions import GRID_SIZE, instruction_pairs, instruction_templates


def test_templates_are_distinct_seeded_and_cover_every_relation():
    templates = instruction_templates(32, seed=0)
    assert len(templates) == 32 and all(set(t) == set(RELATIONS) for t in templates)
    assert len({t["born_in"] for t in templates}) == 32  # distinct phrasings
    assert templates == instruction_templates(32, seed=0) != instruction_templates(32, seed=1)
    assert all(t[r].count("{s}") == 1 for t in templates for r in RELATIONS)
    assert len(instruction_templates(GRID_SIZE)) == GRID_SIZE


def test_template_words_are_known_and_never_pretraining_text():
    world = FactWorld()
    tok = world.tokenizer()
    vocab = tok.get_vocab()
    pretraining = {t.split("{o}")[0].strip() for ts in TEMPLATES.values() for t in ts}
    question = set(INSTRUCTION_FORMATS["question"].values())  # the format packed pretraining may ask in
    for t in instruction_templates(GRID_SIZE):
        for rel in RELATIONS:
            assert all(w in vocab for w in t[rel].split() if w != "{s}"), t[rel]
            assert t[rel] not in pretraining and t[rel] not in question


def test_pairs_put_the_object_after_the_prompt():
    world = FactWorld()
    facts = world.split("train")[:5]
    templates = instruction_templates(3)
    pairs = instruction_pairs(facts, templates)
    assert len(pairs) == 15
    assert pairs[4] == (templates[1][facts[1].relation].format(s=facts[1].subject), facts[1].object)


def test_instruction_bad_input():
    with pytest.raises(ValueError, match=f"n must be an int <= {GRID_SIZE}"):
        instruction_templates(GRID_SIZE + 1)
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        instruction_templates(0)
    with pytest.raises(TypeError, match="templates must be a list of"):
        instruction_pairs(FactWorld().facts[:2], {"born_in": "{s}"})
    with pytest.raises(TypeError, match="facts must be a list of Fact"):
        instruction_pairs(["x"], instruction_templates(1))
    with pytest.raises(ValueError, match="must be non-empty"):
        instruction_pairs([], instruction_templates(1))
