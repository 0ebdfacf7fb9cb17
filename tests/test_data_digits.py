"""The digits families of zoo v2: the broad pretraining set, merge tasks with their own label spaces,
rotation domains and mixtures, and the sub-population shift."""
import torch

from lfm_ref.data import (
    BROAD_PRETRAINING,
    COVERED_CLASSES,
    MERGE_TASKS,
    broad_pretraining_set,
    digits_task,
    merge_task,
    rotate,
    rotation_task,
    similar_class_pairs,
    subpopulation_task,
)


def test_broad_pretraining_covers_the_merge_transforms_for_half_the_classes_only():
    x, y = broad_pretraining_set("train")
    n = len(digits_task("digits", "train")[0])
    covered = sum(int(torch.isin(digits_task(t, "train")[1], torch.tensor(COVERED_CLASSES)).sum()) for t in MERGE_TASKS)
    assert len(x) == len(BROAD_PRETRAINING) * n + covered
    rot90, labels = digits_task("rot90", "train")
    in_set = {img.numpy().tobytes() for img in x}
    assert all(img.numpy().tobytes() in in_set for img in rot90[labels < 5][:20])
    assert not any(img.numpy().tobytes() in in_set for img in rot90[labels >= 5][:20])
    # the pretraining's noise is another draw than the noise task's
    assert not torch.equal(digits_task("noise", "train", seed=1)[0], digits_task("noise", "train")[0])


def test_merge_tasks_have_their_own_label_spaces():
    for name, classes in MERGE_TASKS.items():
        x, y = merge_task(name, "test")
        _, digits = digits_task(name, "test")
        assert y.unique().tolist() == list(range(len(classes)))
        kept = digits[torch.isin(digits, torch.tensor(classes))]
        assert torch.equal(torch.tensor(classes)[y], kept)


def test_rotation_by_zero_is_identity_and_by_90_matches_rot90():
    x, _ = digits_task("digits", "test")
    assert torch.allclose(rotate(x, 0), x)
    assert torch.allclose(rotate(x, 90), digits_task("rot90", "test")[0], atol=1e-5)


def test_a_mixture_domain_splits_images_evenly_between_its_angles():
    x, y = digits_task("digits", "test")
    mix, labels = rotation_task((30, 60), "test", seed=0)
    assert torch.equal(labels, y)
    at30, at60 = rotate(x, 30), rotate(x, 60)
    is30 = (mix - at30).abs().flatten(1).amax(1) < 1e-6
    is60 = (mix - at60).abs().flatten(1).amax(1) < 1e-6
    assert bool((is30 | is60).all()) and abs(int(is30.sum()) - int(is60.sum())) <= 1
    assert torch.equal(rotation_task((30, 60), "test", seed=0)[0], mix)


def test_similar_class_pairs_pairs_the_closest_class_means():
    features = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    assert similar_class_pairs(features, torch.tensor([0, 2, 1, 3])) == ((0, 2), (1, 3))


def test_subpopulation_shift_keeps_superclass_labels_and_swaps_members():
    pairs = ((3, 4), (2, 9))
    xi, yi = subpopulation_task(pairs, "id", "test")
    xo, yo = subpopulation_task(pairs, "ood", "test")
    _, digits = digits_task("digits", "test")
    assert len(xi) == int(torch.isin(digits, torch.tensor([3, 2])).sum())
    assert len(xo) == int(torch.isin(digits, torch.tensor([4, 9])).sum())
    assert set(yi.tolist()) == set(yo.tolist()) == {0, 1}
