"""KD loss formula, cached vs online equivalence, Ray stays at the edges (no Ray)."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydistill.core.config import DataSection
from raydistill.core.config.schema import AugmentSpec, RecipeSection
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits
from raydistill.core.losses import ensemble_soft_targets, kd_loss
from raydistill.core.models import build_model


def _logits(seed, b=8, c=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g), torch.randn(b, c, generator=g), torch.randint(0, c, (b,), generator=g)


def _log_softmax64(z):
    """Row-wise log-softmax in float64 numpy (max-shifted log-sum-exp), independent of torch."""
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _hard_ce64(s, y, smoothing=0.0):
    """CE(z_s, t_y) = -mean_i sum_c t_y[i, c] log softmax(z_s)[i, c], t_y = (1 - eps) onehot(y) + eps / C."""
    log_p = _log_softmax64(s)
    target = (1.0 - smoothing) * np.eye(log_p.shape[1])[np.asarray(y)] + smoothing / log_p.shape[1]
    return float(-(target * log_p).sum(axis=1).mean())


def _kd_formula64(s, t, y, *, T, alpha, smoothing=0.0):
    """The written KD loss in float64 numpy:
    alpha * CE(z_s, y) + (1 - alpha) * T^2 * mean_i KL(softmax(z_t/T) || softmax(z_s/T))."""
    log_p_t = _log_softmax64(np.asarray(t, dtype=np.float64) / T)
    log_q = _log_softmax64(np.asarray(s, dtype=np.float64) / T)
    kl = float((np.exp(log_p_t) * (log_p_t - log_q)).sum(axis=1).mean())
    return alpha * _hard_ce64(s, y, smoothing) + (1.0 - alpha) * T**2 * kl


def test_the_float64_reference_is_the_textbook_formula():
    # Pin the reference itself on a case worked by hand: one row, logits (0, ln 3), label 1.
    # softmax = (1/4, 3/4): CE = -ln(3/4). Teacher logits (0, 0) at T=1: KL((1/2, 1/2) || (1/4, 3/4)).
    s, t, y = np.array([[0.0, np.log(3.0)]]), np.zeros((1, 2)), np.array([1])
    assert _hard_ce64(s, y) == pytest.approx(-np.log(0.75), abs=1e-15)
    kl = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert _kd_formula64(s, t, y, T=1.0, alpha=0.25) == pytest.approx(0.25 * -np.log(0.75) + 0.75 * kl, abs=1e-15)


@pytest.mark.parametrize("T,alpha,smoothing", [(3.0, 0.7, 0.0), (1.0, 0.1, 0.0), (8.0, 0.5, 0.1), (2.0, 0.0, 0.0)])
def test_kd_loss_matches_the_written_formula(T, alpha, smoothing):
    s, t, y = _logits(0)
    expected = _kd_formula64(s.numpy(), t.numpy(), y.numpy(), T=T, alpha=alpha, smoothing=smoothing)
    ours = kd_loss(s, t, y, temperature=T, alpha=alpha, label_smoothing=smoothing)
    assert ours.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    s64, t64 = s.double(), t.double()  # float64 in, float64 out: agrees to rounding
    assert kd_loss(s64, t64, y, temperature=T, alpha=alpha, label_smoothing=smoothing).item() == pytest.approx(
        expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.1), (4.0, 0.0), (8.0, 0.5), (2.5, 0.9)])
def test_kd_loss_gradient_equals_autograd_of_the_formula(T, alpha):
    # kd_loss backpropagates through a hand-written closed form (one autograd node); it must match
    # what autograd derives from the written formula, and gradcheck in float64.
    s, t, y = _logits(7, b=16, c=10)
    ours = s.clone().requires_grad_(True)
    kd_loss(ours, t, y, temperature=T, alpha=alpha).backward()
    ref = s.clone().requires_grad_(True)
    p_t = F.softmax(t / T, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(ref / T, dim=1))).sum(dim=1).mean()
    (alpha * F.cross_entropy(ref, y) + (1 - alpha) * T**2 * kl).backward()
    assert torch.allclose(ours.grad, ref.grad, atol=1e-6)
    s64 = s.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: kd_loss(z, t.double(), y, temperature=T, alpha=alpha), (s64,))


def test_kd_loss_is_finite_and_exact_for_huge_logits():
    # log-softmax all the way: logits of 1e4 overflow exp() in float32, the loss must not.
    s, t, y = (v * 1e4 if v.is_floating_point() else v for v in _logits(9))
    ours = s.clone().requires_grad_(True)
    loss = kd_loss(ours, t, y, temperature=2.0, alpha=0.3)
    loss.backward()
    p_t = F.softmax(t.double() / 2.0, dim=1)  # the written formula in float64, log-softmax based
    kl = (torch.xlogy(p_t, p_t) - p_t * F.log_softmax(s.double() / 2.0, dim=1)).sum(dim=1).mean()
    ref = 0.3 * F.cross_entropy(s.double(), y) + 0.7 * 4.0 * kl
    assert torch.isfinite(loss) and torch.isfinite(ours.grad).all()
    assert torch.allclose(loss.double(), ref, rtol=1e-5)


def test_kd_loss_scales_with_the_upstream_gradient_and_leaves_the_teacher_alone():
    s, t, y = _logits(8)
    once, twice = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    teacher = t.clone().requires_grad_(True)
    kd_loss(once, teacher, y, temperature=3, alpha=0.3).backward()
    (2.5 * kd_loss(twice, t, y, temperature=3, alpha=0.3)).backward()
    assert torch.allclose(2.5 * once.grad, twice.grad, atol=1e-6)
    assert teacher.grad is None
    # The value does not depend on whether the logits require grad: both equal the written formula.
    expected = _kd_formula64(s.numpy(), t.numpy(), y.numpy(), T=3.0, alpha=0.3)
    with_grad = kd_loss(s.clone().requires_grad_(True), t, y, temperature=3, alpha=0.3)
    assert with_grad.item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(s, t, y, temperature=3, alpha=0.3).item() == pytest.approx(expected, rel=1e-5)


def test_alpha_one_is_cross_entropy_and_alpha_zero_ignores_labels():
    s, t, y = _logits(1)
    # CE by hand: -mean_i log softmax(z_s)[i, y_i], float64 numpy, for any teacher.
    ce = float(-_log_softmax64(s.numpy())[np.arange(len(y)), y.numpy()].mean())
    assert ce == pytest.approx(_hard_ce64(s.numpy(), y.numpy()), rel=1e-12)
    for teacher in (t, t.flip(0), torch.zeros_like(t)):
        assert kd_loss(s, teacher, y, temperature=4, alpha=1.0).item() == pytest.approx(ce, rel=1e-5)
    # alpha=0: T^2 * KL only, the same number for any labels, and not the CE.
    soft = _kd_formula64(s.numpy(), t.numpy(), y.numpy(), T=4.0, alpha=0.0)
    for labels in (y, (y + 1) % 5, torch.zeros_like(y)):
        assert kd_loss(s, t, labels, temperature=4, alpha=0.0).item() == pytest.approx(soft, rel=1e-5)
    assert soft != pytest.approx(ce, rel=1e-2)


def test_loss_is_zero_when_student_equals_teacher_and_alpha_zero():
    s, _, y = _logits(2)
    assert kd_loss(s, s.clone(), y, temperature=2, alpha=0.0).abs() < 1e-6
    # alpha=0.5: the KL vanishes and exactly the weighted hard term remains, 0.5 * CE by hand.
    half_ce = 0.5 * float(-_log_softmax64(s.numpy())[np.arange(len(y)), y.numpy()].mean())
    assert kd_loss(s, s.clone(), y, temperature=2, alpha=0.5).item() == pytest.approx(half_ce, rel=1e-5, abs=1e-6)


def test_t_squared_keeps_soft_gradient_scale_independent_of_temperature():
    # Hinton et al. 2015: d/ds [T^2 KL] = T (p_s - p_t) ~ (s - t) / C for large T, so without the
    # T^2 factor the soft gradients would shrink as 1/T^2.
    s, t, y = _logits(3, b=256, c=10)
    norms = []
    for T in (8.0, 32.0):
        s_ = s.clone().requires_grad_(True)
        kd_loss(s_, t, y, temperature=T, alpha=0.0).backward()
        norms.append(s_.grad.norm().item())
    assert 0.8 < norms[0] / norms[1] < 1.25


def test_kd_loss_rejects_bad_hyperparameters():
    s, t, y = _logits(4)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, temperature=0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, temperature=1, alpha=1.5)


@pytest.mark.parametrize("teacher_shape", [(8, 4), (7, 5), (8,)])
def test_kd_loss_names_both_shapes_when_student_and_teacher_disagree(teacher_shape):
    s, _, y = _logits(5)
    with pytest.raises(ValueError, match=r"student logits \(8, 5\) and teacher logits .* same \(B, C\) shape"):
        kd_loss(s, torch.zeros(teacher_shape), y, temperature=2, alpha=0.5)


def test_ensemble_of_one_is_softmax_and_weights_are_normalized():
    _, t, _ = _logits(5)
    single = ensemble_soft_targets([t], [3.0], temperature=2.0)
    assert np.allclose(single.numpy(), np.exp(_log_softmax64(t.numpy() / 2.0)), atol=1e-7)
    mix = ensemble_soft_targets([t, t * 0], [1.0, 3.0], temperature=1.0)
    expected = 0.25 * np.exp(_log_softmax64(t.numpy())) + 0.75 * np.full(t.shape, 1 / t.shape[1])
    assert np.allclose(mix.numpy(), expected, atol=1e-7)
    assert np.allclose(mix.numpy().sum(1), 1.0, atol=1e-6)


def test_cached_and_online_teacher_outputs_train_the_same_student():
    # Prepare: a teacher, its cached logits, and two identical students.
    bundle = load_data(DataSection(), seed=0)
    torch.manual_seed(0)
    teacher = build_model("mlp", bundle.input_shape, 10, {"hidden": [64]})
    fit(teacher, bundle.x_train, bundle.y_train, epochs=2, lr=1e-2, batch_size=64)
    cached = predict_logits(teacher, bundle.x_train)
    torch.manual_seed(1)
    student_a = build_model("mlp", bundle.input_shape, 10, {"hidden": [16]})
    student_b = copy.deepcopy(student_a)
    kd = KDSettings(temperature=4.0, alpha=0.1)
    # Execute: same batches, one with cached logits, one running the teacher online.
    fit(student_a, bundle.x_train, bundle.y_train, epochs=2, lr=1e-2, batch_size=64, kd=kd, teacher_logits=cached)
    fit(student_b, bundle.x_train, bundle.y_train, epochs=2, lr=1e-2, batch_size=64, kd=kd, teachers=[teacher])
    # Assert: same weights up to float noise, and a student that learned something.
    for pa, pb in zip(student_a.parameters(), student_b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)
    assert evaluate(student_a, bundle.x_test, bundle.y_test)["accuracy"] > 0.8


def test_a_model_answering_nan_scores_zero_accuracy_not_the_share_of_class_zero():
    # Found by review: argmax of a NaN row is class 0, so a diverged model scored the share of class-0
    # labels (here all of them: 1.0) and a diverged Tune trial could be ranked best.
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].bias[1] = float("nan")  # every row of logits holds a NaN
    x = np.random.default_rng(0).normal(size=(10, 1, 2, 2)).astype(np.float32)
    result = evaluate(model, x, np.zeros(10, dtype=np.int64))
    assert result["accuracy"] == 0.0 and math.isnan(result["loss"])
    healthy = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    expected = float((healthy(torch.from_numpy(x)).argmax(1) == 0).float().mean())  # by hand
    assert evaluate(healthy, x, np.zeros(10, dtype=np.int64))["accuracy"] == pytest.approx(expected)


def test_fit_trains_convolutions_channels_last_and_hands_back_the_default_layout_with_the_same_step():
    # Prepare: a small cnn, a copy for a hand-written NCHW Adam step, one full batch of digits.
    bundle = load_data(DataSection(), seed=0)
    x, y = bundle.x_train[:64], bundle.y_train[:64]
    torch.manual_seed(0)
    model = build_model("cnn", bundle.input_shape, 10, {"channels": [4, 8], "fc": 16})
    by_hand = copy.deepcopy(model)
    seen = []  # the second conv weight's layout at each forward while fit trains (the first, one input
    # channel, is channels-last and contiguous at once: a size-1 axis has any stride)
    model[3].register_forward_hook(lambda m, i, o: seen.append(
        m.weight.is_contiguous(memory_format=torch.channels_last)))
    # Execute: fit's one step (batch = all 64, Adam at a constant lr) and the same step written out.
    fit(model, x, y, epochs=1, lr=1e-2, batch_size=64)
    optimizer = torch.optim.Adam(by_hand.parameters(), lr=1e-2)
    F.cross_entropy(by_hand(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    optimizer.step()
    # Assert: trained channels-last, given back contiguous, and the same weights as the NCHW step.
    assert seen == [True]
    assert all(p.is_contiguous() for p in model.parameters())
    for (name, p), q in zip(model.named_parameters(), by_hand.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_a_model_already_channels_last_is_used_and_handed_back_as_it_was():
    # conv_layout converts only what is in the default layout, so an outer one (an actor that converted its
    # teachers once, fit's own) is not undone by an inner pass such as predict_logits.
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10, {"channels": [4, 8], "fc": 16})
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        want = model.eval()(x).numpy()  # default layout
    model.to(memory_format=torch.channels_last)
    got = predict_logits(model, x.numpy())
    assert model[3].weight.is_contiguous(memory_format=torch.channels_last) and not model[3].weight.is_contiguous()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _shift_flip(x, rows, cols, flips, k, fill):
    """numpy, one example at a time: pad by ``k`` with ``fill``, crop at (rows[i], cols[i]), mirror where flips[i]."""
    out = np.empty_like(x)
    for i in range(len(x)):
        padded = np.pad(x[i], ((0, 0), (k, k), (k, k)), constant_values=fill)
        crop = padded[:, rows[i]:rows[i] + x.shape[2], cols[i]:cols[i] + x.shape[3]]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


def test_online_kd_under_augmentation_trains_like_the_script_a_user_writes():
    # benchmarks/kd_plain_script.py compares engine.fit with a plain script on different random streams;
    # this pins down that, given the same batches, the two are the same computation. The script's side
    # rebuilds the engine's batches from its seeding (order: randperm(n) of Generator(seed + epoch), as
    # engine.iterate_batches; augmentation: Generator(seed + epoch + 1) drawing offsets randint(0, 2k+1,
    # (2, B)) then flips rand(B) < 0.5, as recipe.augment_batch documents) — so a change to that seeding
    # must change this test too — with numpy shifts and flips and Hinton's loss written with F.kl_div.
    bundle = load_data(DataSection(), seed=0)
    torch.manual_seed(0)
    teacher = build_model("mlp", bundle.input_shape, 10, {"hidden": [64]})
    fit(teacher, bundle.x_train, bundle.y_train, epochs=2, lr=1e-2, batch_size=64)
    teacher.eval()
    torch.manual_seed(1)
    engine_student = build_model("mlp", bundle.input_shape, 10, {"hidden": [16]})
    script_student, initial = copy.deepcopy(engine_student), copy.deepcopy(engine_student)
    spec, fill, T, alpha, seed, epochs, batch = AugmentSpec(hflip=True, translate=1), -0.5, 4.0, 0.5, 3, 2, 64
    fit(engine_student, bundle.x_train, bundle.y_train, epochs=epochs, lr=1e-2, batch_size=batch, seed=seed,
        kd=KDSettings(temperature=T, alpha=alpha), teachers=[teacher], recipe=RecipeSection(augment=spec),
        fill=(fill,))
    opt = torch.optim.Adam(script_student.parameters(), 1e-2)
    x, y = np.asarray(bundle.x_train, np.float32), torch.as_tensor(bundle.y_train)
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + epoch)).numpy()
        draws = torch.Generator().manual_seed(seed + epoch + 1)
        for start in range(0, len(y), batch):
            i = order[start:start + batch]
            offsets = torch.randint(0, 3, (2, len(i)), generator=draws).numpy()
            flips = (torch.rand(len(i), generator=draws) < 0.5).numpy()
            xb = torch.from_numpy(_shift_flip(x[i], offsets[0], offsets[1], flips, 1, fill))
            z = script_student(xb)
            with torch.no_grad():
                p = F.softmax(teacher(xb) / T, dim=1)
            loss = alpha * F.cross_entropy(z, y[i]) + (1 - alpha) * T * T * F.kl_div(
                F.log_softmax(z / T, dim=1), p, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b, w0 in zip(engine_student.parameters(), script_student.parameters(), initial.parameters()):
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
        assert (a - w0).abs().max() > 1e-2  # both moved far more than they differ
