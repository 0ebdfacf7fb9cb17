"""Which weights to tune (Part I, chapter 1): trainable sets of each mode, LP-FT's two stages, WiSE-FT's line."""
import copy

import pytest
import torch

from lfm_ref import fit
from lfm_ref.tuning import lp_ft, select_trainable, wise_ft
from lfm_ref.zoo.models import TinyViT


def vit():
    torch.manual_seed(0)
    return TinyViT(dim=16, depth=3, heads=2)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_each_mode_trains_what_it_says():
    model = vit()
    everything = {n for n, _ in model.named_parameters()}
    assert trainable(select_trainable(model, "full")) == everything
    assert trainable(select_trainable(model, "linear_probe")) == {"head.weight", "head.bias"}
    last2 = trainable(select_trainable(model, "last_k", k=2))
    assert last2 == {n for n in everything if n.startswith(("blocks.1.", "blocks.2.", "head."))}
    bitfit = trainable(select_trainable(model, "bitfit"))
    assert bitfit == {n for n in everything if n.endswith("bias")} | {"head.weight"}


def test_lp_ft_is_a_probe_then_full_fine_tuning():
    data = (torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    model = vit()
    probe_losses, ft_losses = lp_ft(copy.deepcopy(model), data, lp_steps=3, ft_steps=2, lp_lr=1e-2, ft_lr=1e-3,
                                    seed=0)
    assert len(probe_losses) == 3 and len(ft_losses) == 2
    # the same two stages by hand give the same weights
    by_hand = select_trainable(copy.deepcopy(model), "linear_probe")
    fit(by_hand, data, steps=3, lr=1e-2, seed=0)
    probed = copy.deepcopy(by_hand.state_dict())
    assert all(torch.equal(probed[k], v) for k, v in model.state_dict().items() if not k.startswith("head."))
    fit(select_trainable(by_hand, "full"), data, steps=2, lr=1e-3, seed=0)
    again = copy.deepcopy(model)
    lp_ft(again, data, lp_steps=3, ft_steps=2, lp_lr=1e-2, ft_lr=1e-3, seed=0)
    assert all(torch.allclose(again.state_dict()[k], v) for k, v in by_hand.state_dict().items())


def test_wise_ft_is_the_straight_line_between_the_two_models():
    a, b = vit().state_dict(), TinyViT(dim=16, depth=3, heads=2).state_dict()
    assert all(torch.equal(wise_ft(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.allclose(wise_ft(a, b, 1.0)[k], b[k]) for k in a)
    mid = wise_ft(a, b, 0.25)
    assert all(torch.allclose(mid[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-6) for k in a)


def test_finetune_bad_input():
    model = vit()
    with pytest.raises(ValueError, match="mode must be one of .*got 'lora'"):
        select_trainable(model, "lora")
    with pytest.raises(ValueError, match="between 1 and the number of blocks \\(3\\), got 4"):
        select_trainable(model, "last_k", k=4)
    with pytest.raises(ValueError, match="close names"):
        select_trainable(model, "linear_probe", head="classifier")
    with pytest.raises(TypeError, match="nn.ModuleList"):
        select_trainable(model, "last_k", blocks="norm")
    with pytest.raises(ValueError, match="alpha must lie in \\[0.0, 1.0\\], got 1.5"):
        wise_ft(model.state_dict(), model.state_dict(), 1.5)
    with pytest.raises(ValueError, match="keys"):
        wise_ft(model.state_dict(), {"x": torch.zeros(1)}, 0.5)


def test_wise_ft_is_the_shared_interpolation_on_the_segment():
    from lfm_ref.state_dicts import interpolate

    a, b = vit().state_dict(), TinyViT(dim=16, depth=3, heads=2).state_dict()
    for alpha in (0.0, 0.3, 0.5, 1.0):
        mine, shared = wise_ft(a, b, alpha), interpolate(a, b, alpha)
        assert all(torch.equal(mine[k], shared[k]) for k in a)
    with pytest.raises(TypeError, match="alpha must be a number"):
        wise_ft(a, b, "0.5")


def test_part_one_does_not_import_part_three():
    """Tuning (Part I) depends on the shared core only, never on lfm_ref.reuse (Part III)."""
    import ast
    from pathlib import Path

    import lfm_ref.tuning

    for path in Path(lfm_ref.tuning.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "reuse" not in module and "distill" not in module, f"{path.name} imports {module}"
