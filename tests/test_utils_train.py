import numpy as np
import pytest
import torch
from torch import nn

from lfm_ref import count_parameters, device, evaluate, fit, seed_everything
from lfm_ref.train import DictDataset, default_loss


def test_seed_everything_makes_draws_repeatable():
    seed_everything(3)
    a = (torch.rand(4), np.random.rand(2))
    gen = seed_everything(3)
    b = (torch.rand(4), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("bad", ["0", 1.5, None, True])
def test_seed_everything_rejects_non_int(bad):
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(bad)


def test_seed_everything_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seed_everything(-1)


def test_device_choice(monkeypatch):
    monkeypatch.delenv("LFM_DEVICE", raising=False)
    assert isinstance(device(), torch.device)
    assert device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LFM_DEVICE", "cpu")
    assert device() == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            device("cuda")


def _linear_task(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0]) > 0).long()
    return x, y


def test_fit_learns_a_linear_task_and_evaluate_measures_it():
    x, y = _linear_task()
    seed_everything(0)
    model = nn.Linear(5, 2)
    before = evaluate(model, (x, y))
    losses = fit(model, (x, y), epochs=30, lr=0.05, device="cpu", seed=0)
    assert len(losses) == 30 * 4  # 256 examples / batch 64
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    after = evaluate(model, (x, y))
    assert after > 0.95 and after > before
    assert not model.training


def test_fit_is_deterministic_given_seed():
    x, y = _linear_task()
    runs = []
    for _ in range(2):
        seed_everything(1)
        model = nn.Linear(5, 2)
        runs.append(fit(model, (x, y), epochs=2, lr=0.01, device="cpu", seed=1))
    assert runs[0] == runs[1]


def test_fit_steps_and_params_subset():
    x, y = _linear_task()
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    frozen = model[0].weight.detach().clone()
    losses = fit(model, (x, y), steps=7, params=model[2].parameters(), device="cpu")
    assert len(losses) == 7
    assert torch.equal(model[0].weight, frozen)


def test_evaluate_counts_exactly():
    class Fixed(nn.Module):  # predicts class 1 for every input
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).expand(len(x), 2) + 0 * self.w

    x = torch.zeros(10, 3)
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    assert evaluate(Fixed(), (x, y), batch_size=3) == pytest.approx(0.3)


def test_fit_bad_input_errors():
    x, y = _linear_task(8)
    model = nn.Linear(5, 2)
    with pytest.raises(ValueError, match="empty"):
        fit(model, (x[:0], y[:0]), device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        fit(model, (x, y), epochs=0, device="cpu")
    with pytest.raises(ValueError, match="lr"):
        fit(model, (x, y), lr=-1, device="cpu")
    with pytest.raises(TypeError, match="DataLoader, a Dataset or a tuple"):
        fit(model, [1, 2, 3], device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, (x, y), device="cpu")


def test_default_loss_needs_known_batch():
    with pytest.raises(TypeError, match="loss_fn"):
        default_loss(nn.Linear(2, 2), torch.zeros(3, 2))


def test_dict_dataset_checks_lengths():
    with pytest.raises(ValueError, match="same length"):
        DictDataset({"a": torch.zeros(3), "b": torch.zeros(4)})
    ds = DictDataset({"a": torch.arange(3), "b": torch.arange(3) * 2})
    assert ds[2] == {"a": torch.tensor(2), "b": torch.tensor(4)}


def test_count_parameters():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 8 and count_parameters(model, trainable_only=True) == 6


@pytest.mark.gpu
def test_fit_and_evaluate_on_cuda():
    x, y = _linear_task()
    model = nn.Linear(5, 2)
    fit(model, (x, y), epochs=20, lr=0.05, device="cuda", seed=0)
    assert next(model.parameters()).is_cuda
    assert evaluate(model, (x, y)) > 0.9


def test_predict_batches_and_restores_mode():
    from lfm_ref import predict

    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    x = torch.randn(10, 3)
    out = predict(model, x, batch_size=3)
    assert model.training
    with torch.no_grad():
        assert torch.allclose(out, model.eval()(x))
    with pytest.raises(TypeError, match="tensor"):
        predict(model, [1, 2])


def test_tensor_batches_cover_every_example_once():
    from lfm_ref.train import as_loader

    x = torch.arange(10)
    batches = list(as_loader((x, x * 2), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[0] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(b[1], b[0] * 2) for b in batches)  # rows stay aligned
    with pytest.raises(ValueError, match="same length"):
        as_loader((x, x[:3]), batch_size=2, shuffle=False)


def test_evaluate_restores_each_submodule_mode_and_checks_labels():
    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    model[1].eval()  # a partly frozen model keeps its mix of modes
    x, y = _linear_task(16)
    evaluate(model, (x, y))
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(ValueError, match=r"labels must hold class indices in \[0, 2\), got values from 0 to 5"):
        evaluate(model, (x, torch.tensor([0, 5] * 8)))
    # float targets are no class indices: a regression metric still works
    mse = evaluate(nn.Linear(5, 1), (x, torch.zeros(16, 1)), metric=lambda out, t: ((out - t) ** 2).sum())
    assert mse >= 0


def test_fit_checks_its_arguments_the_checks_way():
    x, y = _linear_task(8)
    model = nn.Linear(5, 2)
    with pytest.raises(TypeError, match=r"steps must be an int, got str \('100'\)"):
        fit(model, (x, y), steps="100", device="cpu")
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        fit(model, (x, y), loss_fn="mse", device="cpu")
    with pytest.raises(ValueError, match="schedule must be one of"):
        fit(model, (x, y), schedule="linear", device="cpu")
    with pytest.raises(TypeError, match="batch_size must be an int"):
        fit(model, (x, y), batch_size=8.0, device="cpu")
