"""Averaging across and along runs: greedy soups, FedAvg, and the checkpoints that SWA and LAWA average."""
import pytest
import torch

from lfm_ref import evaluate, fit, seed_everything
from lfm_ref.data import digits_task
from lfm_ref.reuse import fedavg, greedy_soup, weighted_average
from lfm_ref.zoo.models import TinyMLP


def test_greedy_soup_never_scores_below_its_best_ingredient():
    torch.manual_seed(0)
    target = {"w": torch.zeros(5)}
    ingredients = [{"w": torch.randn(5)} for _ in range(6)]
    def score(sd):  # closer to the target is better
        return -(sd["w"] - target["w"]).norm().item()

    soup, kept = greedy_soup(ingredients, score)
    assert score(soup) >= max(score(sd) for sd in ingredients)
    assert kept[0] == max(range(6), key=lambda i: score(ingredients[i]))
    assert torch.allclose(soup["w"], weighted_average([ingredients[i] for i in kept])["w"])
    # opposite ingredients average to the target, so a greedy soup of them keeps both
    _, both = greedy_soup([{"w": torch.ones(5)}, {"w": -torch.ones(5)}], score)
    assert sorted(both) == [0, 1]


def test_fedavg_with_one_client_and_one_round_is_local_training():
    x, y = digits_task("digits", "train")
    seed_everything(0)
    model = TinyMLP()
    reference = TinyMLP()
    reference.load_state_dict(model.state_dict())
    fedavg(model, [(x, y)], rounds=1, local_steps=30, lr=3e-3, batch_size=32, device="cpu", seed=7)
    fit(reference, (x, y), steps=30, lr=3e-3, batch_size=32, device="cpu", seed=7)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, reference.state_dict()[k], atol=1e-6), k


def test_fedavg_weighs_clients_by_their_data_and_learns():
    x, y = digits_task("digits", "train")
    clients = [(x[:100], y[:100]), (x[100:], y[100:])]  # unequal sizes
    seed_everything(0)
    start = TinyMLP()
    model = TinyMLP()
    model.load_state_dict(start.state_dict())
    fedavg(model, clients, rounds=1, local_steps=20, lr=3e-3, batch_size=32, device="cpu", seed=0)
    local = []
    for k, data in enumerate(clients):  # what each client computes in round 1 (seed = seed + k)
        m = TinyMLP()
        m.load_state_dict(start.state_dict())
        fit(m, data, steps=20, lr=3e-3, batch_size=32, device="cpu", seed=k)
        local.append(m.state_dict())
    expected = weighted_average(local, weights=[100, len(x) - 100])  # sum_k n_k theta_k / n
    assert all(torch.allclose(v, expected[k], atol=1e-6) for k, v in model.state_dict().items())
    rounds = []
    fedavg(model, clients, rounds=3, local_steps=40, lr=3e-3, batch_size=32, device="cpu",
           callback=lambda r, m: rounds.append(r))
    assert rounds == [1, 2, 3]
    assert evaluate(model, digits_task("digits", "test")) > 0.5  # far above chance (10%)


def test_fit_callback_records_checkpoints_for_swa():
    x, y = digits_task("digits", "train")
    checkpoints, steps = [], []
    model = TinyMLP()
    fit(model, (x, y), steps=50, lr=3e-3, device="cpu", seed=0, every=10,
        callback=lambda step, m: (steps.append(step),
                                  checkpoints.append({k: v.clone() for k, v in m.state_dict().items()})))
    assert steps == [10, 20, 30, 40, 50]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in checkpoints[-1].items())  # the last is the final model
    assert not torch.equal(checkpoints[0]["head.weight"], checkpoints[-1]["head.weight"])


def test_averaging_bad_input():
    with pytest.raises(ValueError, match="clients is empty"):
        fedavg(TinyMLP(), [], rounds=1, local_steps=1)
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        fedavg(TinyMLP(), [digits_task("digits", "train")], rounds=0, local_steps=1)
    with pytest.raises(ValueError, match="empty"):
        greedy_soup([], lambda sd: 0.0)
    with pytest.raises(ValueError, match="every must be a positive int"):
        fit(TinyMLP(), digits_task("digits", "train"), steps=2, device="cpu", callback=lambda s, m: None)


# ----- AdapterSoup ---------------------------------------------------------------------------------
def test_adapter_soup_averages_the_most_similar_adapters():
    from lfm_ref.reuse import adapter_soup, domain_similarity

    adapters = [{"lora_A": torch.full((2, 3), float(i)), "lora_B": torch.full((3, 2), -float(i))} for i in range(4)]
    soup, chosen = adapter_soup(adapters, [0.1, 0.9, -0.5, 0.7], k=2)
    assert chosen == [1, 3]
    assert torch.allclose(soup["lora_A"], torch.full((2, 3), 2.0))
    assert torch.allclose(soup["lora_B"], torch.full((3, 2), -2.0))
    g = torch.Generator().manual_seed(0)
    shifts = (torch.tensor([3.0, 0, 0, 0]), torch.tensor([0, 3.0, 0, 0]))
    domains = [torch.randn(50, 4, generator=g) + shift for shift in shifts]
    sims = domain_similarity(lambda x: x, domains[1][:25], domains)
    assert sims.argmax() == 1 and sims[1] > 0.9
    with pytest.raises(ValueError, match="one score per adapter"):
        adapter_soup(adapters, [0.1, 0.2], k=1)
    with pytest.raises(ValueError, match="k must be an int between 1 and"):
        adapter_soup(adapters, [0.1, 0.9, -0.5, 0.7], k=5)
    with pytest.raises(ValueError, match="at least one training domain"):
        domain_similarity(lambda x: x, domains[0], [])
