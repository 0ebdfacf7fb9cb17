
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfm_ref import fit, seed_everything
from lfm_ref.distill import (
    Cohort,
    Distillation,
    HintRegressor,
    born_again,
    fitnets_hint_objective,
    hint_loss,
    kd_loss,
    kd_objective,
    mutual_learning_loss,
    mutual_learning_objective,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    rkd_objective,
)
from lfm_ref.hooks import capture_outputs
from lfm_ref.zoo.models import TinyMLP

torch.manual_seed(0)
S, T, Y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))


# ----- defining properties ------------------------------------------------------------------------
def test_kd_loss_is_zero_when_student_equals_teacher():
    assert kd_loss(T, T, temperature=3.0, alpha=1.0).abs() < 1e-6
    assert kd_loss(T.clone().requires_grad_(), T).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_matches_its_formula_with_t_squared():
    for temp in (1.0, 2.0, 5.0):
        p_t, log_p_s = F.softmax(T / temp, -1), F.log_softmax(S / temp, -1)
        kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
        expected = 0.7 * temp**2 * kl + 0.3 * F.cross_entropy(S, Y)
        assert torch.allclose(kd_loss(S, T, Y, temperature=temp, alpha=0.7), expected, atol=1e-6)


def test_t_squared_keeps_gradient_scale_at_high_temperature():
    """Hinton's argument: at high T the soft gradient is (z_s - z_t) / (N T^2); T^2 cancels it."""
    s0, t0 = S - S.mean(-1, keepdim=True), T - T.mean(-1, keepdim=True)  # zero-mean logits, as in the paper
    temp = 1000.0
    s = s0.clone().requires_grad_()
    kd_loss(s, t0, temperature=temp, alpha=1.0).backward()
    expected = (s0 - t0) / (10 * len(s0))  # batchmean over B rows; N = 10 classes
    assert torch.allclose(s.grad, expected, rtol=1e-2, atol=1e-5)


def test_rkd_is_invariant_to_rotation_and_scale():
    emb = torch.randn(12, 8)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    rotated = 3.0 * emb @ q
    assert rkd_distance_loss(rotated, emb) < 1e-5
    assert rkd_angle_loss(rotated, emb) < 1e-5
    assert rkd_loss(torch.randn(12, 8), emb) > 0.1


def test_rkd_accepts_different_widths():
    assert torch.isfinite(rkd_loss(torch.randn(8, 4), torch.randn(8, 64)))


def test_hint_loss_is_zero_for_a_perfect_regressor():
    reg = HintRegressor(4, 6)
    v = torch.randn(5, 4)
    assert hint_loss(v, reg(v).detach(), reg) == 0
    conv = HintRegressor(3, 5, conv=True)
    assert hint_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4), conv) > 0


def test_mutual_learning_loss_is_ce_when_peers_agree():
    logits = torch.stack([S, S, S])
    assert torch.allclose(mutual_learning_loss(logits, Y), 3 * F.cross_entropy(S, Y), atol=1e-6)


def test_mutual_learning_objective_is_a_factory_of_the_loss():
    """``*_objective(...)`` returns a ``loss_fn(model, batch)``, as every other objective does."""
    peers = [TinyMLP(), TinyMLP(hidden=16)]
    x = torch.rand(8, 1, 8, 8)
    loss_fn = mutual_learning_objective()
    cohort = Cohort(peers)
    assert torch.allclose(loss_fn(cohort, (x, Y[:8])), mutual_learning_loss(cohort(x), Y[:8]))
    with pytest.raises(TypeError, match="Cohort"):
        loss_fn(peers[0], (x, Y[:8]))


def test_mutual_learning_gradient_of_each_peer_is_its_own_loss():
    a, b = S.clone().requires_grad_(), T.clone().requires_grad_()
    mutual_learning_loss(torch.stack([a, b]), Y).backward()
    a2 = S.clone().requires_grad_()
    (F.cross_entropy(a2, Y) + F.kl_div(F.log_softmax(a2, -1), F.log_softmax(T, -1), reduction="batchmean",
                                        log_target=True)).backward()
    assert torch.allclose(a.grad, a2.grad, atol=1e-6)


def test_distillation_keeps_teacher_frozen_and_in_eval():
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    stats = teacher[2].running_mean.clone()
    d = Distillation(TinyMLP(n_classes=2, image_size=2), teacher, regressor=HintRegressor(32, 4)).train()
    assert not d.teacher.training and d.student.training
    x = torch.randn(64, 1, 2, 2)
    fit(d, (x, torch.zeros(64, dtype=torch.long)), loss_fn=fitnets_hint_objective("body", "2"), steps=3, device="cpu")
    assert torch.equal(teacher[2].running_mean, stats)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_born_again_makes_generations():
    seed_everything(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    teacher = TinyMLP()
    students = born_again(TinyMLP, teacher, (x, y), generations=2, steps=2, device="cpu")
    assert len(students) == 2 and all(isinstance(s, TinyMLP) for s in students)


# ----- peer equivalence: torchdistill ------------------------------------------------------------
torchdistill = pytest.importorskip("torchdistill.losses.mid_level", reason="torchdistill is installed by make setup")


def _io(x):
    return {"m": {"output": x}}


def test_kd_loss_equals_torchdistill():
    for temp, alpha in ((4.0, 0.9), (1.0, 0.5), (2.5, 0.0)):
        # torchdistill's alpha weighs cross-entropy; ours weighs the soft term
        peer = torchdistill.KDLoss("m", "output", "m", "output", temperature=temp, alpha=1 - alpha, beta=alpha)
        assert torch.allclose(kd_loss(S, T, Y, temp, alpha), peer(_io(S), _io(T), targets=Y), atol=1e-6)


def test_kd_loss_without_targets_differs_from_torchdistill_by_t_squared():
    """torchdistill drops the T^2 factor when no targets are given (design.md §6); we keep it."""
    peer = torchdistill.KDLoss("m", "output", "m", "output", temperature=4.0, alpha=0)
    assert torch.allclose(kd_loss(S, T, temperature=4.0), 16.0 * peer(_io(S), _io(T)), atol=1e-5)


def test_rkd_equals_torchdistill():
    s, t = torch.randn(10, 6), torch.randn(10, 12)
    peer = torchdistill.RKDLoss("m", "m", dist_factor=25.0, angle_factor=50.0, reduction="mean")
    assert torch.allclose(rkd_loss(s, t), peer(_io(s), _io(t)), atol=1e-5)


def test_hint_loss_equals_torchdistill_mse_wrapper():
    reg = HintRegressor(4, 6)
    v, u = torch.randn(5, 4), torch.randn(5, 6)
    peer = torchdistill.SimpleLossWrapper(nn.MSELoss(),
                                          input={"is_from_teacher": False, "module_path": "r", "io": "output"},
                                          target={"is_from_teacher": True, "module_path": "m", "io": "output"})
    expected = peer({"r": {"output": reg(v)}}, _io(u), None)
    assert torch.allclose(hint_loss(v, u, reg), 0.5 * expected, atol=1e-6)


# ----- bad input ---------------------------------------------------------------------------------
def test_distillation_bad_input():
    with pytest.raises(ValueError, match=r"temperature must lie in \(0.0, inf\]"):
        kd_loss(S, T, temperature=0)
    with pytest.raises(ValueError, match="same number of classes"):
        kd_loss(torch.randn(4, 5), torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"alpha must lie in \[0.0, 1.0\]"):
        kd_loss(S, T, Y, alpha=1.5)
    with pytest.raises(ValueError, match="same inputs"):
        kd_loss(torch.randn(4, 10), torch.randn(5, 10))
    with pytest.raises(ValueError, match="temperature"):
        kd_objective(nn.Linear(2, 2), temperature=-1)
    with pytest.raises(ValueError, match="same batch"):
        rkd_loss(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="at least 3"):
        rkd_loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="size the HintRegressor"):
        hint_loss(torch.randn(2, 4), torch.randn(2, 7), HintRegressor(4, 6))
    with pytest.raises(ValueError, match="at least 2 peers"):
        Cohort([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="generations"):
        born_again(TinyMLP, TinyMLP(), (torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)), generations=0)


def test_capture_outputs_names_close_modules():
    with pytest.raises(ValueError, match=r"no module 'bodyy'.*close names: \['body'"):
        with capture_outputs(TinyMLP(), ["bodyy"]):
            pass
    model = TinyMLP()
    with capture_outputs(model, ["body"]) as out:
        model(torch.rand(3, 1, 8, 8))
    assert out["body"].shape == (3, 32)
    assert not model.body._forward_hooks  # hooks removed afterwards


# ----- modes: an objective that runs the teacher gives it back in its own mode ----------------------------
def test_kd_objective_runs_the_teacher_in_eval_mode_and_restores_it():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.Linear(16, 10)).train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    student = TinyMLP()
    loss_fn = kd_objective(teacher)
    assert teacher.training  # making the objective does not touch the teacher
    online = loss_fn(student, (x, y))
    assert teacher.training and teacher[2].training  # train mode in, train mode out
    with torch.no_grad():
        teacher.eval()
        offline = kd_loss(student(x), teacher(x), y)  # dropout off: the teacher's deterministic targets
        teacher.train()
    assert torch.allclose(online, offline)
    assert all(p.requires_grad and p.grad is None for p in teacher.parameters())


def test_born_again_leaves_the_first_teacher_in_its_mode():
    teacher = TinyMLP().train()
    born_again(TinyMLP, teacher, (torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))), generations=1,
               steps=1, device="cpu")
    assert teacher.training


def test_objectives_are_factories_of_a_loss_fn():
    """The naming rule: ``*_loss`` takes tensors, ``*_objective(...)`` returns ``loss_fn(model, batch)``."""
    for objective in (kd_objective(None), fitnets_hint_objective("body", "features"),
                      rkd_objective("body", "features"), mutual_learning_objective()):
        assert callable(objective) and objective.__name__ == "loss_fn"


def test_offline_kd_equals_online_kd():
    """Precomputed teacher logits give exactly the loss of running the teacher on the batch."""
    from lfm_ref import predict

    teacher, student = TinyMLP(hidden=16), TinyMLP()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    online = kd_objective(teacher)(student, (x, y))
    offline = kd_objective(None)(student, (x, y, predict(teacher, x)))
    assert torch.allclose(online, offline)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_objective(None)(student, (x, y))


# ----- batched seeds and augmented born-again (chapter 7, section 4) ------------------------------
def test_independent_objective_trains_members_as_separate_runs():
    from lfm_ref.distill import independent_objective

    seed_everything(0)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    a, b = TinyMLP(), TinyMLP()
    alone = [TinyMLP(), TinyMLP()]
    for m, ref in zip(alone, (a, b)):
        m.load_state_dict(ref.state_dict())
    # full-batch steps: every run sees the same batches, so the cohort must equal the two runs
    fit(Cohort([a, b]), (x, y), loss_fn=independent_objective(), steps=3, batch_size=32, device="cpu")
    for m in alone:
        fit(m, (x, y), steps=3, batch_size=32, device="cpu")
    for m, ref in zip(alone, (a, b)):
        for p, q in zip(m.parameters(), ref.parameters()):
            assert torch.allclose(p, q, atol=1e-6)


def test_independent_objective_takes_one_objective_per_member():
    from lfm_ref.distill import independent_objective

    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    calls = []
    fns = [lambda m, b, k=k: calls.append(k) or F.cross_entropy(m(b[0]), b[1]) for k in range(3)]
    loss = independent_objective(fns)(Cohort([TinyMLP() for _ in range(3)]), (x, y))
    assert calls == [0, 1, 2] and loss.dim() == 0
    with pytest.raises(ValueError, match="3 objectives for a cohort of 2"):
        independent_objective(fns)(Cohort([TinyMLP(), TinyMLP()]), (x, y))


def test_born_again_pairs_the_members_of_cohorts_and_augments():
    from lfm_ref.data.augment import shift_and_noise

    seed_everything(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    teachers = Cohort([TinyMLP(), TinyMLP()])
    seen = []

    def augment(inputs):
        seen.append(inputs.shape)
        return shift_and_noise(inputs, shift=1, noise=0.1)

    students = born_again(lambda: Cohort([TinyMLP(), TinyMLP()]), teachers, (x, y), generations=2,
                          augment=augment, steps=2, batch_size=32, device="cpu")
    assert len(students) == 2 and all(len(s.peers) == 2 for s in students)
    assert len(seen) == 2 * 2 * 2  # generations x steps x members: every member draws its own view
    with pytest.raises(ValueError, match="Cohort of as many members"):
        born_again(TinyMLP, teachers, (x, y), generations=1, steps=1, device="cpu")
