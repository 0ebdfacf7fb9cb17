"""Black-box input engineering (Part I, chapter 4): the API, CMA-ES against a closed-form optimum,
Black-Box Tuning, PromptBoosting's AdaBoost, RLPrompt's REINFORCE; no gradient ever reaches the model."""
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lfm_ref.blackbox import ScoreAPI
from lfm_ref.data import FactWorld
from lfm_ref.lm import next_token_logits
from lfm_ref.tuning.black_box import (
    BlackBoxTuning,
    PromptPolicy,
    boosted_predict,
    cma_es,
    learned_verbaliser,
    prompt_boosting,
    rl_prompt,
    verbalised_predict,
)


@pytest.fixture(scope="module")
def lm():
    world = FactWorld()
    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).eval()
    people = world.people[:12]
    return model, tok, people, world.cities[:5]


def test_the_api_scores_candidates_like_the_model_and_counts_queries(lm):
    model, tok, people, cities = lm
    api = ScoreAPI(model, tok, cities)
    out = api.hard(people, ["was born in", "works as a"])
    assert out.shape == (2, 12, 5) and api.queries == 24
    ids = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in cities]
    expected = next_token_logits(model, tok, [f"{p} was born in" for p in people])[:, ids].log_softmax(-1)
    assert torch.allclose(out[0], expected, atol=1e-5)
    # a soft prompt made of the words' embeddings is the same query as the words
    words = tok(" was born in", add_special_tokens=False)["input_ids"]
    soft = api.soft(people, model.get_input_embeddings().weight[words][None])
    assert torch.allclose(soft[0], out[0], atol=1e-5) and api.queries == 36


def test_cma_es_finds_the_minimum_of_a_shifted_ellipsoid():
    target = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    scales = torch.tensor([1.0, 10.0, 1.0, 100.0, 1.0])
    mean, history = cma_es(lambda x: ((x - target) ** 2 * scales).sum(1), dim=5, generations=150, seed=0)
    assert torch.allclose(mean, target, atol=1e-3)
    assert history[-1] < 1e-5 < history[0]


def test_black_box_tuning_never_gives_the_model_a_gradient(lm):
    model, tok, people, cities = lm
    model.requires_grad_(True)  # even trainable parameters must get no .grad through the API
    api = ScoreAPI(model, tok, cities)
    init = model.get_input_embeddings().weight[:3].detach()
    bbt = BlackBoxTuning(api, init, dim=4)
    assert torch.equal(bbt.prompts(torch.zeros(1, 4))[0], init)  # z = 0: the initial prompt
    labels = torch.arange(12) % 5
    history = bbt.fit(people, labels, generations=3, popsize=6, batch_size=8)
    assert len(history) == 3 and api.queries == 3 * 6 * 8
    assert bbt.predict(people).shape == (12,)
    assert all(p.grad is None for p in model.parameters())


def test_black_box_tuning_with_zo_sgd_lowers_the_api_loss(lm):
    """The book's one zeroth-order estimator (lfm_ref.blackbox.zo_sgd) as BBT's optimiser: full-batch
    steps, so the loss it reports is one objective, and it falls."""
    model, tok, people, cities = lm
    api = ScoreAPI(model, tok, cities)
    init = model.get_input_embeddings().weight[:3].detach()
    bbt = BlackBoxTuning(api, init, dim=8, seed=0)
    labels = torch.arange(12) % 5
    # a random tiny GPT-2 scores every city about alike: a flat loss, hence the large step
    history = bbt.fit(people, labels, generations=25, batch_size=12, optimizer="zo_sgd", lr=100.0,
                      directions=8, seed=0)
    assert len(history) == 25 and api.queries == 25 * 12 * (1 + 1 + 8)  # f(z), then f(z) and 8 directions
    assert history[-1] < history[0] - 0.005 and sum(history[-5:]) < sum(history[:5]), history
    assert bbt.z.abs().sum() > 0 and all(p.grad is None for p in model.parameters())


class KeywordAPI:
    """A fake service: the right answer gets most of the probability if the prompt contains "born"."""

    candidates = ["a", "b", "c"]

    def __init__(self):
        self.queries = 0

    def hard(self, texts, prompts):
        labels = torch.tensor([int(t) for t in texts])
        out = torch.full((len(prompts), len(texts), 3), math.log(0.25))
        for i, p in enumerate(prompts):
            good = math.log(0.9) if "born" in p.split() else math.log(0.5)
            out[i, torch.arange(len(texts)), labels] = good
        self.queries += len(prompts) * len(texts)
        return out


def test_rl_prompt_learns_the_rewarded_word_with_reinforce():
    policy = PromptPolicy(["in", "born", "the", "of"], n_tokens=2)
    texts, labels = [str(i % 3) for i in range(30)], torch.tensor([i % 3 for i in range(30)])
    history = rl_prompt(KeywordAPI(), texts, labels, policy, steps=60, samples=8, batch_size=10, lr=0.2)
    assert "born" in policy.greedy().split()
    assert history[-1] > history[0]
    idx, prompts = policy.sample(5, torch.Generator().manual_seed(0))
    by_hand = sum(policy.logits.log_softmax(-1)[pos, idx[:, pos]] for pos in range(2))
    assert torch.allclose(policy.log_prob(idx), by_hand)


def test_prompt_boosting_is_samme_on_the_prompts_predictions(lm):
    model, tok, people, cities = lm
    api = ScoreAPI(model, tok, cities)
    pool = ["was born in", "works as a", "is originally from the city of"]
    labels = torch.arange(12) % 3  # 3 classes, 5 candidate words
    chosen, verbalisers, alphas = prompt_boosting(api, people, labels, pool, rounds=1)
    logp = api.hard(people, pool)
    uniform = torch.full((12,), 1 / 12, dtype=torch.float64)
    v = learned_verbaliser(logp, labels, uniform, 3)  # round 1: uniform weights
    errors = (verbalised_predict(logp, v) != labels).float().mean(1)
    best = int(errors.argmin())
    assert chosen == [best] and verbalisers == [v[best].tolist()]
    assert alphas[0] == pytest.approx(math.log((1 - errors[best]) / errors[best]) + math.log(2), abs=1e-5)
    single = verbalised_predict(logp[best:best + 1], v[best:best + 1])[0]
    assert torch.equal(boosted_predict(api, people, pool, chosen, verbalisers, alphas), single)
    chosen, verbalisers, alphas = prompt_boosting(api, people, labels, pool, rounds=3)
    rounds = boosted_predict(api, people, pool, chosen, verbalisers, alphas, every_round=True)
    assert rounds.shape == (len(chosen), 12)
    assert torch.equal(rounds[0], single)
    assert torch.equal(rounds[-1], boosted_predict(api, people, pool, chosen, verbalisers, alphas))


class TableAPI:
    """A fake service whose scores are a fixed table ``(prompts, texts, words)``; texts are row indices."""

    def __init__(self, logp, pool):
        self.logp, self.pool, self.queries = logp, list(pool), 0
        self.candidates = [f"w{i}" for i in range(logp.shape[-1])]

    def hard(self, texts, prompts):
        self.queries += len(texts) * len(prompts)
        rows = torch.tensor([int(t) for t in texts])
        return self.logp[[self.pool.index(p) for p in prompts]][:, rows]


def _random_scores(prompts=4, texts=30, words=7, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (2 * torch.randn(prompts, texts, words, generator=g)).log_softmax(-1)
    labels = torch.randint(0, classes, (texts,), generator=g)
    weights = torch.rand(texts, generator=g, dtype=torch.float64)
    return logp, labels, weights / weights.sum()


def _weighted_accuracy(logp, v, labels, weights):
    return ((verbalised_predict(logp, v) == labels).double() * weights).sum(-1)


def test_learned_verbaliser_takes_each_class_word_of_highest_weighted_mean_log_prob():
    logp, labels, weights = _random_scores()
    v = learned_verbaliser(logp, labels, weights, 3)
    assert v.shape == (4, 3)
    for p in range(4):
        for c in range(3):
            rows = labels == c
            score = (weights[rows, None] * logp[p, rows].double()).sum(0) / weights[rows].sum()
            assert int(v[p, c]) == int(score.argmax())


def test_screened_verbaliser_is_a_local_optimum_of_the_weighted_accuracy():
    """Among each class's ``screen`` best-scoring words, no single switch raises the weighted training
    accuracy, and the screen never does worse than the likelihood step alone."""
    for seed in range(3):
        logp, labels, weights = _random_scores(seed=seed)
        first = learned_verbaliser(logp, labels, weights, 3)
        v = learned_verbaliser(logp, labels, weights, 3, screen=3)
        acc = _weighted_accuracy(logp, v, labels, weights)
        assert (acc >= _weighted_accuracy(logp, first, labels, weights) - 1e-12).all()
        per_class = torch.stack([(weights[labels == c, None] * logp[:, labels == c].double()).sum(1)
                                 for c in range(3)], 1)  # (P, C, V), up to each class's weight
        top = per_class.topk(3, dim=-1).indices
        for p in range(4):
            assert all(int(v[p, c]) in top[p, c].tolist() for c in range(3))
            for c in range(3):
                for word in top[p, c].tolist():
                    trial = v[p:p + 1].clone()
                    trial[0, c] = word
                    assert _weighted_accuracy(logp[p:p + 1], trial, labels, weights)[0] <= acc[p] + 1e-12


def test_prompt_boosting_learns_which_word_stands_for_which_class():
    """Classes are not answer words: class 0 makes the model say word 3, class 1 word 1; the verbaliser
    finds that, and the one prompt that carries it is chosen."""
    labels = torch.tensor([0, 1] * 10)
    logp = torch.full((2, 20, 5), -3.0)
    logp[0, labels == 0, 3] = -0.1  # prompt 0: informative
    logp[0, labels == 1, 1] = -0.1
    logp[1, :, 2] = -0.1  # prompt 1: always the same word
    api = TableAPI(logp.log_softmax(-1), ["a", "b"])
    texts = [str(i) for i in range(20)]
    chosen, verbalisers, alphas = prompt_boosting(api, texts, labels, ["a", "b"], rounds=1)
    assert chosen == [0] and verbalisers == [[3, 1]] and api.queries == 40
    assert torch.equal(boosted_predict(api, texts, ["a", "b"], chosen, verbalisers, alphas), labels)


def test_prompt_boosting_reweights_the_mistakes_by_samme():
    """Round t + 1 learns its verbalisers on w_i exp(alpha_t [h_t(x_i) != y_i]), normalised."""
    logp, labels, _ = _random_scores(prompts=5, texts=40, words=6, classes=3, seed=4)
    pool, texts = [f"p{i}" for i in range(5)], [str(i) for i in range(40)]
    chosen, verbalisers, alphas = prompt_boosting(TableAPI(logp, pool), texts, labels, pool, rounds=3)
    weights = torch.full((40,), 1 / 40, dtype=torch.float64)
    for t in range(len(chosen)):
        v = learned_verbaliser(logp, labels, weights, 3)
        wrong = (verbalised_predict(logp, v) != labels).double()
        errors = (wrong * weights).sum(1)
        assert chosen[t] == int(errors.argmin()) and verbalisers[t] == v[chosen[t]].tolist()
        err = errors[chosen[t]].item()
        assert alphas[t] == pytest.approx(math.log((1 - err) / err) + math.log(2))
        weights = weights * torch.exp(alphas[t] * wrong[chosen[t]])
        weights = weights / weights.sum()


def test_black_box_bad_input(lm):
    model, tok, people, cities = lm
    api = ScoreAPI(model, tok, cities)
    with pytest.raises(ValueError, match="init_prompt must have shape"):
        BlackBoxTuning(api, torch.zeros(3, 7))
    with pytest.raises(ValueError, match="pool is empty"):
        prompt_boosting(api, people, torch.zeros(12, dtype=torch.long), [], rounds=3)
    with pytest.raises(ValueError, match="chosen .* is empty"):
        boosted_predict(api, people, ["x"], [], [], [])
    with pytest.raises(ValueError, match="dim must be an int >= 1"):
        cma_es(lambda x: x.sum(1), dim=0, generations=3)
    with pytest.raises(ValueError, match="at least 2 words"):
        PromptPolicy(["only"])


def test_prompt_boosting_never_returns_an_empty_choice():
    """A pool whose every prompt is at chance or worse: a clear error, never an empty ``chosen``."""

    class Chance(KeywordAPI):
        def hard(self, texts, prompts):
            return torch.zeros(len(prompts), len(texts), 3)  # always answers "a"

    texts, labels = [str(i % 3) for i in range(30)], torch.tensor([1, 2] * 15)
    with pytest.raises(ValueError, match="no prompt of the pool beats chance"):
        prompt_boosting(Chance(), texts, labels, ["x", "y"], rounds=3)


def test_black_box_methods_leave_the_model_in_train_mode(lm):
    """Every query runs in eval mode, and the caller's model comes back in the mode it had."""
    model, tok, people, cities = lm
    model.train()
    try:
        api = ScoreAPI(model, tok, cities)
        labels = torch.arange(12) % 5
        bbt = BlackBoxTuning(api, model.get_input_embeddings().weight[:2].detach(), dim=2)
        bbt.fit(people, labels, generations=1, popsize=2, batch_size=4)
        bbt.fit(people, labels, generations=1, batch_size=4, optimizer="zo_sgd", directions=1)
        bbt.predict(people)
        chosen, verbalisers, alphas = prompt_boosting(api, people, labels, ["was born in", "works as a"], rounds=1)
        boosted_predict(api, people, ["was born in", "works as a"], chosen, verbalisers, alphas)
        rl_prompt(api, people, labels, PromptPolicy(["in", "born"], 1), steps=1, samples=2, batch_size=4)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_black_box_methods_do_not_touch_the_global_rng(lm):
    model, tok, people, cities = lm
    api = ScoreAPI(model, tok, cities)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bbt = BlackBoxTuning(api, model.get_input_embeddings().weight[:2].detach(), dim=2, seed=5)
    bbt.fit(people, torch.arange(12) % 5, generations=2, popsize=2, batch_size=4, seed=7)
    rl_prompt(api, people, torch.arange(12) % 5, PromptPolicy(["in", "born"], 1), steps=1, batch_size=4)
    assert torch.equal(torch.rand(3), expected)
