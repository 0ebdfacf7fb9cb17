import pytest
import torch

from lfm_ref.data import DIGITS_TASKS, RELATIONS, EditRequest, Fact, FactWorld, digits_task


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = FactWorld(seed=0), FactWorld(seed=0), FactWorld(seed=1)
    assert a.facts == b.facts and a.held_out == b.held_out and a.corpus() == b.corpus()
    assert a.facts != c.facts


def test_world_shape(world):
    assert len(world.people) == 300 and len(world.cities) == 40 and len(world.countries) == 10
    by_rel = {r: [f for f in world.facts if f.relation == r] for r in RELATIONS}
    assert len(by_rel["born_in"]) == len(by_rel["profession"]) == 300
    assert {f.object for f in by_rel["country"]} == set(world.countries)  # no empty country
    # every (subject, relation) has one object
    assert len({(f.subject, f.relation) for f in world.facts}) == len(world.facts)


def test_splits_are_disjoint_and_cover(world):
    train, held = world.split("train"), world.split("held_out")
    assert set(train).isdisjoint(held)
    assert len(train) + len(held) == len(world.split("all"))
    assert len(held) == round(0.1 * 600)
    assert all(f.relation in ("born_in", "profession") for f in held)  # only person facts are held out
    sentences = set(world.corpus("train"))
    assert not any(f.sentence(t) in sentences for f in held for t in range(4))
    assert len(world.corpus("train")) == 3 * len(train)


def test_strangers_are_new_people_in_known_words(world):
    """``strangers``: people not in the world, named with its words, one birthplace and one profession
    each; the same for the same seed."""
    facts = world.strangers(40, seed=3)
    assert facts == world.strangers(40, seed=3) and facts != world.strangers(40, seed=4)
    subjects = {f.subject for f in facts}
    assert len(facts) == 80 and len(subjects) == 40 and not subjects & set(world.people)
    assert all(sum(f.subject == s for f in facts) == 2 for s in subjects)
    assert all(f.object in world.objects(f.relation) for f in facts)
    tok = world.tokenizer()
    assert all(tok.unk_token_id not in tok(f.sentence(0))["input_ids"] for f in facts)


def test_prompt_is_sentence_without_object(world):
    for fact in world.facts[:50]:
        for t in range(4):
            assert fact.sentence(t).startswith(fact.prompt(t) + " " + fact.object)


def test_decoding_gives_back_the_text(world, tiny_gpt):
    """Text a model writes must tokenize back to the same ids (sequence-level KD trains on it)."""
    texts = world.corpus("all", templates="all")[:200] + [p for p, _ in world.instructions("fill")[:20]]
    for tok in (world.tokenizer(), tiny_gpt[1]):
        ids = [tok(t)["input_ids"] for t in texts]
        assert tok.batch_decode(ids, skip_special_tokens=True) == texts


def test_every_object_is_one_token(world):
    tok = world.tokenizer()
    for relation in RELATIONS:
        for obj in world.objects(relation):
            assert len(tok(" " + obj, add_special_tokens=False)["input_ids"]) == 1
    ids = tok(world.corpus()[0])["input_ids"]
    assert ids[0] == tok.eos_token_id and tok.unk_token_id not in ids
    for fmt in ("question", "command", "fill"):
        prompt, answer = world.instructions(fmt)[0]
        assert tok.unk_token_id not in tok(prompt + " " + answer)["input_ids"]


def test_edit_requests_are_counterfactual(world):
    requests = world.edit_requests(n=10, seed=0)
    assert len(requests) == 10 and requests == world.edit_requests(n=10, seed=0)
    edited = {r.subject for r in requests}
    for r in requests:
        assert isinstance(r, EditRequest) and r.target_new != r.target_true
        assert world.lookup(r.subject, "born_in") == r.target_true
        assert len(r.paraphrases) == 3 and all(r.subject in p for p in r.paraphrases)
        assert r.paraphrases[-1] == Fact(r.subject, "born_in", "").prompt(3)  # the held-out template
        assert r.neighbours
        for prompt, obj in r.neighbours:
            # a neighbour keeps the edited object and is no request's subject: editing all ten at once
            # leaves every neighbour's fact as it was
            assert obj == r.target_true and not any(s in prompt for s in edited)


def test_fact_world_bad_input(world):
    with pytest.raises(TypeError, match="seed must be an int"):
        FactWorld(seed="0")
    with pytest.raises(ValueError, match="n_people"):
        FactWorld(n_people=1)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        world.split("test")
    with pytest.raises(ValueError, match="unknown relation"):
        world.objects("capital")
    with pytest.raises(ValueError, match="unknown instruction format"):
        world.instructions("poem")
    with pytest.raises(ValueError, match=r"n must lie in \[1, "):
        world.edit_requests(n=0)
    with pytest.raises(ValueError, match=r"n must lie in \[1, "):
        world.edit_requests(n=200)
    with pytest.raises(KeyError):
        world.lookup("Nobody", "born_in")


def test_digits_tasks_shapes_and_determinism():
    for name in DIGITS_TASKS:
        x, y = digits_task(name, "train")
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) and len(x) == len(y)
        assert 0 <= x.min() and x.max() <= 1
        x2, _ = digits_task(name, "train")
        assert torch.equal(x, x2)
    x, y = digits_task("digits", "train")
    xt, yt = digits_task("digits", "test")
    assert len(x) + len(xt) == 1797 and len(xt) == 360


def test_digits_transforms_are_what_they_say():
    x, y = digits_task("digits", "test")
    assert torch.equal(digits_task("rot90", "test")[0], torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(digits_task("flip", "test")[0], torch.flip(x, dims=(3,)))
    assert torch.allclose(digits_task("invert", "test")[0], 1 - x)
    low_y = digits_task("low", "test")[1]
    assert set(low_y.tolist()) == {0, 1, 2, 3, 4}
    assert set(digits_task("high", "test")[1].tolist()) == {5, 6, 7, 8, 9}


def test_digits_bad_input():
    with pytest.raises(ValueError, match=r"unknown digits task 'rot45'; known tasks: \["):
        digits_task("rot45")
    with pytest.raises(ValueError, match="unknown split"):
        digits_task("digits", "valid")


def test_capital_pairs_are_the_real_world_fill_in_prompts():
    from lfm_ref.data import CAPITALS, capital_pairs

    assert capital_pairs(2) == [("Fill in : The capital of France is ___ . Answer :", "Paris"),
                                ("Fill in : The capital of Germany is ___ . Answer :", "Berlin")]
    assert [a for _, a in capital_pairs()] == list(CAPITALS.values())
    assert capital_pairs(["Japan"], "Question : capital of {c} ?") == [("Question : capital of Japan ?", "Tokyo")]
