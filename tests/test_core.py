"""The shared core: checks, state dicts, device/mode helpers, black-box access and the notebook kit."""
import inspect
import random

import numpy as np
import pytest
import torch
from torch import nn

from lfm_ref import blackbox, book, checks, state_dicts
from lfm_ref.utils import device_of, eval_mode


def _model():
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))


# ----- checks -----------------------------------------------------------------------------------
def test_checks_return_the_value_they_accept():
    assert checks.positive_int(np.int64(3), "r") == 3 and type(checks.positive_int(np.int64(3), "r")) is int
    assert checks.number(2, "lam") == 2.0 and isinstance(checks.number(2, "lam"), float)
    assert checks.probability(0.0, "p") == 0.0 and checks.texts(("a", "b")) == ["a", "b"]
    with pytest.raises(ValueError, match=r"p must lie in \[0.0, 1.0\)"):
        checks.probability(1.0, "p", high_open=True)
    with pytest.raises(ValueError, match="nan"):
        checks.number(float("nan"), "lam")


def test_same_shape_refuses_what_would_broadcast():
    weight = torch.ones(3, 4)
    assert checks.same_shape(torch.zeros(3, 4), weight, "fisher", "weight") is not None
    with pytest.raises(ValueError, match=r"fisher must have the shape of weight, \(3, 4\), got \(4,\)"):
        checks.same_shape(torch.zeros(4), weight, "fisher", "weight")  # (4,) broadcasts against (3, 4)


# ----- utils ------------------------------------------------------------------------------------
def test_eval_mode_restores_every_submodule_flag_even_on_error():
    model = _model().train()
    model[1].eval()  # a caller's partly frozen model
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside")
    assert model.training and not model[1].training and model[3].training


def test_device_of_reads_parameters_then_buffers():
    assert device_of(_model()) == torch.device("cpu")
    assert device_of(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


# ----- state dicts ------------------------------------------------------------------------------
def test_interpolate_is_lerp_and_keeps_integer_buffers():
    a, b = nn.BatchNorm1d(3).state_dict(), nn.BatchNorm1d(3).state_dict()
    b["weight"] += 2.0
    b["num_batches_tracked"] += 5
    mid = state_dicts.interpolate(a, b, 0.25)
    assert torch.allclose(mid["weight"], a["weight"] + 0.5)
    assert mid["num_batches_tracked"] == a["num_batches_tracked"]
    tau = state_dicts.task_vector(a, b)
    assert "num_batches_tracked" not in tau and torch.allclose(tau["weight"], torch.full((3,), 2.0))


def test_snapshot_does_not_follow_later_training():
    model = _model()
    copy = state_dicts.snapshot(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(copy["0.weight"], model[0].weight)


# ----- black-box access -------------------------------------------------------------------------
def test_classifier_api_counts_queries_keeps_the_mode_and_passes_no_gradient():
    model = _model().train()
    api = blackbox.ClassifierAPI(model)
    x = torch.randn(5, 4, requires_grad=True)
    probs = api(x)
    assert api.queries == 5 and not probs.requires_grad and model.training
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    with eval_mode(model):
        assert torch.allclose(probs, model(x).softmax(-1))  # eval mode inside: dropout off
    top2 = blackbox.ClassifierAPI(model, top_k=2)(x)
    assert ((top2 > 0).sum(-1) == 2).all() and torch.allclose(top2.max(-1).values, probs.max(-1).values)
    labels = blackbox.ClassifierAPI(model, output="label")(x)
    assert torch.equal(labels, probs.argmax(-1))


def test_zeroth_order_gradient_of_a_linear_function_is_unbiased():
    w = torch.randn(6)
    g = blackbox.zeroth_order_grad(lambda x: x @ w, torch.zeros(1, 6), directions=20_000, eps=1e-2,
                                   generator=torch.Generator().manual_seed(0))
    assert torch.allclose(g[0], w, atol=0.1 * w.abs().max().item())


def test_zo_sgd_minimises_a_quadratic_without_gradients():
    target = torch.tensor([1.0, -2.0, 0.5])
    x, history = blackbox.zo_sgd(lambda x: ((x - target) ** 2).sum(1), torch.zeros(3), steps=200, lr=0.05,
                                 directions=8)
    assert history[-1] < 0.01 * history[0] and torch.allclose(x, target, atol=0.1)


def test_zo_sgd_does_not_touch_the_global_rng():
    state = torch.random.get_rng_state()
    blackbox.zo_sgd(lambda x: (x ** 2).sum(1), torch.ones(2), steps=3, lr=0.1, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())


# ----- the notebook kit -------------------------------------------------------------------------
def test_show_is_the_live_source_with_where_it_lives():
    shown = book.show(state_dicts.interpolate)
    assert shown.text == inspect.getsource(state_dicts.interpolate)
    first = inspect.getsourcelines(state_dicts.interpolate)[1]
    assert shown.where.startswith("lfm_ref.state_dicts.interpolate: lfm_ref/state_dicts.py, lines ")
    assert f"lines {first}-" in shown.where
    html = shown._repr_html_()
    assert "style=" in html and "interpolate" in html and repr(shown).startswith("# lfm_ref.state_dicts")


def test_seed_table_prints_and_returns_mean_and_population_std(capsys):
    summary = book.seed_table({"LoRA": [0.8, 0.9, 1.0], "full": [0.5, 0.5, 0.5]})
    out = capsys.readouterr().out
    assert summary["LoRA"] == pytest.approx((0.9, np.std([0.8, 0.9, 1.0])))
    assert "90.0% ± 8.2%" in out and "80.0% 90.0% 100.0%" in out and "3 seeds" in out
    rows = book.seed_table({"a": [[0.1, 0.2], [0.3, 0.4]]}, columns=["ID", "OOD"], extra={"n": {"a": 1200}})
    assert np.allclose(rows["a"][0], [0.2, 0.3]) and "1,200" in capsys.readouterr().out
    with pytest.raises(ValueError, match="one row of 3 values per seed"):
        book.seed_table({"a": [[0.1, 0.2]]}, columns=["x", "y", "z"])


def test_seed_bars_draws_a_bar_per_method_and_a_dot_per_seed():
    import matplotlib

    matplotlib.use("Agg")
    ax = book.seed_bars({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0]}, ylabel="accuracy")
    assert len(ax.patches) == 2 and sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets")) >= 6


def test_val_report_split_matches_the_chapters_randperm_halves():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    (vx, vy), (rx, ry) = book.val_report_split((x, y))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vy, y[order[:5]]) and torch.equal(ry, y[order[5:]])
    val, report = book.val_report_split({"a": (x, y), "b": (x, y)})
    assert set(val) == {"a", "b"} and torch.equal(report["a"][1], ry)


def test_split_in_halves_matches_random_sample_order():
    items = [f"fact {i}" for i in range(9)]
    first, second = book.split_in_halves(items, seed=0)
    order = random.Random(0).sample(range(9), 9)
    assert first == [items[i] for i in order[:4]] and second == [items[i] for i in order[4:]]


def test_evaluate_state_dict_loads_into_the_probe():
    model, probe = _model(), _model()
    x = torch.randn(64, 4)
    with eval_mode(model):
        y = model(x).argmax(-1)
    assert book.evaluate_state_dict(probe, model.state_dict(), (x, y)) == 1.0
    both = book.evaluate_state_dict(probe, model.state_dict(), {"t1": (x, y), "t2": (x, (y + 1) % 3)})
    assert both.shape == (2,) and both[0] == 1.0 and both[1] == 0.0


def test_seconds_per_call_times_without_autograd():
    calls = []
    seconds = book.seconds_per_call(lambda: calls.append(torch.is_grad_enabled()), repeats=3, warmup=2)
    assert seconds >= 0 and calls == [False] * 5



@torch.no_grad()
def _decorated(x):
    return x + 1


def test_show_finds_a_decorated_function_where_it_is_written():
    shown = book.show(_decorated)
    assert "tests/test_core.py" in shown.where and "return x + 1" in shown.text


def test_pin_threads_sets_torch_threads_and_returns_them():
    import lfm_ref

    before = torch.get_num_threads()
    try:
        assert lfm_ref.pin_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match=r"n must be a positive int \(a number of threads\), got 0"):
        lfm_ref.pin_threads(0)
