"""lfm_ref.data.augment: the augmentation and the digit-pairs task of chapter 7, section 4."""
import pytest
import torch
import torch.nn.functional as F

from lfm_ref.data import digits_task
from lfm_ref.data.augment import PAIR_CLASSES, digit_pairs, shift_and_noise, with_augmentation


def test_shift_moves_each_image_by_at_most_one_pixel_with_zeros_filling_in():
    x = torch.zeros(200, 1, 8, 8)
    x[:, :, 3, 4] = 1.0  # one bright pixel
    out = shift_and_noise(x, shift=1, noise=0.0, generator=torch.Generator().manual_seed(0))
    where = out.flatten(1).argmax(1)
    rows, cols = where // 8, where % 8
    assert out.sum(dim=(1, 2, 3)).eq(1).all()  # the pixel moved, nothing wrapped or duplicated
    assert (rows - 3).abs().le(1).all() and (cols - 4).abs().le(1).all()
    assert len({(r, c) for r, c in zip(rows.tolist(), cols.tolist())}) == 9  # all 9 shifts occur
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 0, :] = 1.0
    moved = shift_and_noise(edge.expand(50, -1, -1, -1), shift=1, noise=0.0,
                            generator=torch.Generator().manual_seed(1))
    assert moved.sum(dim=(1, 2, 3)).min() < 8  # a top row shifted up leaves the image: no wrap-around


def test_shift_and_noise_keeps_the_range_and_the_input_and_the_global_stream():
    x = torch.rand(16, 1, 8, 8)
    before, state = x.clone(), torch.random.get_rng_state()
    out = shift_and_noise(x, shift=1, noise=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before) and torch.equal(torch.random.get_rng_state(), state)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    again = shift_and_noise(x, shift=1, noise=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(shift_and_noise(x, shift=0, noise=0.0), x.clamp(0, 1))


def test_with_augmentation_replaces_only_the_inputs():
    seen = {}

    def loss_fn(model, batch):
        seen["batch"] = batch
        return torch.tensor(0.0)

    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with_augmentation(loss_fn, lambda inputs: inputs + 1)(None, (x, y))
    assert torch.equal(seen["batch"][0], x + 1) and seen["batch"][1] is y
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    loss = with_augmentation(None, lambda inputs: inputs)(model, (x, y))
    assert torch.allclose(loss, F.cross_entropy(model(x), y))
    with pytest.raises(ValueError, match="teacher_logits"):
        with_augmentation(loss_fn, lambda inputs: inputs)(None, (x, y, torch.rand(4, 10)))


def test_digit_pairs_put_two_digits_of_one_split_side_by_side():
    x, y = digits_task("digits", "test")
    images, labels = digit_pairs("test", 300, seed=0)
    assert images.shape == (300, 1, 8, 16) and labels.min() >= 0 and labels.max() < PAIR_CLASSES
    left = (images[:, None, :, :, :8] - x[None]).abs().flatten(2).sum(-1).argmin(1)   # which test digit
    right = (images[:, None, :, :, 8:] - x[None]).abs().flatten(2).sum(-1).argmin(1)
    assert torch.equal(labels, 10 * y[left] + y[right])
    assert len(labels.unique()) > 90  # the 100 classes are drawn uniformly
    assert torch.equal(digit_pairs("test", 300, seed=0)[0], images)
    assert not torch.equal(digit_pairs("test", 300, seed=1)[0], images)
