"""Chapter 15, data-free meta-learning: the zoo, white- and black-box inversion, fusion, pseudo episodes."""
import pytest
import torch
from torch import nn

from lfm_ref.blackbox import ClassifierAPI
from lfm_ref.data.few_shot import few_shot_classes
from lfm_ref.meta import EpisodeSampler, few_shot_accuracy
from lfm_ref.meta.data_free import (
    DistilledTasks,
    PseudoTasks,
    fuse_zoo,
    invert_api,
    invert_zoo,
    meta_train,
    protonet_distill_objective,
    protonet_predict,
    robust_fusion_weights,
    train_task_zoo,
)
from lfm_ref.zoo.models import TinyCNN


@pytest.fixture(scope="module")
def zoo():
    x, y = few_shot_classes("meta-train")
    return train_task_zoo(x, y, 3, n_way=5, width=8, steps=30, seed=0)


def test_zoo_is_deterministic_covers_distinct_meta_train_classes_and_shares_an_init(zoo):
    x, y = few_shot_classes("meta-train")
    again = train_task_zoo(x, y, 3, n_way=5, width=8, steps=30, seed=0)
    for a, b in zip(zoo, again):
        assert torch.equal(a.classes, b.classes)
        assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    classes = torch.cat([t.classes for t in zoo])
    assert len(classes.unique()) == 15 and torch.isin(classes, y.unique()).all()
    assert not torch.isin(classes, few_shot_classes("meta-test")[1]).any()
    untrained = train_task_zoo(x, y, 2, n_way=5, width=8, steps=1, lr=1e-12, seed=0)
    w0, w1 = (t.model.features[0][0].weight for t in untrained)
    assert torch.allclose(w0, w1)  # one shared initial state (averaging is meaningful)
    state = torch.random.get_rng_state()
    train_task_zoo(x, y, 1, n_way=5, width=8, steps=1, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # never reseeds the global stream


def test_fusion_is_the_weighted_mean_of_weights_and_buffers():
    a, b = TinyCNN(5, 8), TinyCNN(5, 8)
    with torch.no_grad():
        b.features[0][1].running_mean.fill_(2.0)
    fused = fuse_zoo([a, b], weights=[3, 1])
    for k, t in fused.state_dict().items():
        if t.is_floating_point():
            assert torch.allclose(t, 0.75 * a.state_dict()[k] + 0.25 * b.state_dict()[k])
    assert fuse_zoo([a]).state_dict()["head.weight"].equal(a.head.weight)


def _scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


@pytest.mark.parametrize("radius", [0.05, 0.1, 0.2, 1.0])
def test_robust_fusion_matches_the_closed_form_on_three_points(radius):
    # models at 0, 0 and 1: the mean squared distance between two members is 2/3, so
    # the far member sits at cost 1.5 in radius units. The worst case moves mass
    # m = radius / 1.5 from the two near members to it (capped when the centre reaches
    # 1/2, the centre of the smallest enclosing ball); the centre is the mean of that
    # worst case, theta* = min(1/3 + radius / 1.5, 1/2).
    models = [_scalar_model(0.0), _scalar_model(0.0), _scalar_model(1.0)]
    a = robust_fusion_weights(models, radius)
    assert torch.allclose(a.sum(), torch.tensor(1.0)) and (a >= 0).all()
    theta = fuse_zoo(models, weights=a.tolist()).weight.item()
    assert theta == pytest.approx(min(1 / 3 + radius / 1.5, 0.5), abs=5e-3)


def test_robust_fusion_at_radius_zero_is_the_zoo_average(zoo):
    models = [t.model for t in zoo]
    a = robust_fusion_weights(models, 0.0)
    assert torch.equal(a, torch.full((3,), 1 / 3))
    wide = robust_fusion_weights(models, 0.5)
    assert not torch.allclose(wide, a, atol=1e-3)  # the worst case re-weights them
    fused = fuse_zoo(models, weights=wide.tolist())
    assert isinstance(fused, TinyCNN) and fused is not models[0]


def test_white_box_inversions_are_class_faithful(zoo):
    tasks = invert_zoo(zoo, per_class=4, steps=30, seed=0)
    faithful = []
    for t, (x, y) in zip(zoo, tasks):
        assert x.shape == (20, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
        faithful.append((t.model(x).argmax(1) == y).float().mean())
    assert min(faithful) > 0.5 and sum(faithful) / len(faithful) >= 0.7  # chance is 0.2


def test_black_box_inversion_counts_every_query_and_raises_the_target_probability(zoo):
    api = ClassifierAPI(zoo[0].model)
    x0, y = invert_api(api, 5, per_class=2, steps=1, directions=3, seed=1)
    assert api.queries == 1 * 10 * (3 + 1)  # steps * images * (directions + 1)
    api.queries = 0
    x, y = invert_api(api, 5, per_class=2, steps=20, directions=4, seed=1)
    assert api.queries == 20 * 10 * 5
    start = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    p = zoo[0].model.eval()(x).softmax(-1).gather(1, y[:, None]).mean()
    p0 = zoo[0].model(start).softmax(-1).gather(1, y[:, None]).mean()
    assert p > p0


def test_pseudo_episodes_take_one_task_each_and_meta_training_lowers_the_loss():
    gen = torch.Generator().manual_seed(0)
    tasks = [(torch.full((10, 1, 8, 8), float(i)), torch.arange(10) % 5) for i in range(3)]
    e = PseudoTasks(tasks, k_shot=1, q_query=1).batch(4, gen)
    assert e.support_x.shape == (4, 5, 1, 8, 8) and e.n_way == 5
    assert all(e.support_x[i].unique().numel() == 1 for i in range(4))  # one pseudo task per episode
    x, y = few_shot_classes("meta-train")
    torch.manual_seed(0)
    model = TinyCNN(5, 8)
    losses = meta_train(model, EpisodeSampler(x, y, 5, 1, 5), steps=40, seed=0)
    assert sum(losses[-10:]) < sum(losses[:10])


def test_distilled_tasks_carry_the_api_probabilities_of_their_query_images(zoo):
    apis = [ClassifierAPI(t.model) for t in zoo[:2]]
    tasks = [(torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(i)), torch.arange(10) % 5)
             for i in range(2)]
    source = DistilledTasks(apis, tasks, k_shot=1, q_query=1)
    assert [a.queries for a in apis] == [10, 10]
    episodes, probs = source.batch(3, torch.Generator().manual_seed(0))
    assert probs.shape == (3, 5, 5) and torch.allclose(probs.sum(-1), torch.ones(3, 5))
    with torch.no_grad():
        direct = [torch.stack([a._model.eval()(episodes.query_x[i]).softmax(-1) for a in apis]) for i in range(3)]
    assert all(min((probs[i] - d).abs().max() for d in direct[i]) < 1e-5 for i in range(3))
    model = TinyCNN(5, 8)
    loss = protonet_distill_objective(alpha=1.0)(model, (episodes, probs))
    plain = protonet_distill_objective()(model, episodes)
    assert loss >= plain - 1e-6  # KL >= 0
    acc, half = few_shot_accuracy(protonet_predict(model), episodes)
    assert 0 <= acc <= 1 and half >= 0


@pytest.mark.gpu
def test_data_free_meta_learning_on_cuda():
    x, y = few_shot_classes("meta-train")
    zoo = train_task_zoo(x, y, 2, n_way=5, width=8, steps=2, seed=0)
    for t in zoo:
        t.model.cuda()
    tasks = invert_zoo(zoo, per_class=2, steps=2)
    apis = [ClassifierAPI(t.model) for t in zoo]
    btasks = [invert_api(a, 5, per_class=2, steps=1, directions=1) for a in apis]
    model = fuse_zoo([t.model for t in zoo]).cuda()
    meta_train(model, PseudoTasks(tasks, 1, 1), steps=2)
    meta_train(model, DistilledTasks(apis, btasks, 1, 1), steps=2, objective=protonet_distill_objective(alpha=1.0))
    assert next(model.parameters()).is_cuda
