"""The KD step's speed paths give the written numbers: class-major softmax for few classes, the fused
KD loss in both layouts, and cached views that hand the loop softened probabilities once per epoch.
Checked against float64 numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydistill.core.config.schema import AugmentSpec
from raydistill.core.engine import KDSettings, batch_loss, fit, iterate_batches, view_softener
from raydistill.core.loop import StageSpec, build_for_spec, run_epochs
from raydistill.core.losses import class_major, kd_loss, softmax_classes
from raydistill.core.methods import parse_method
from raydistill.core.models import build_model
from raydistill.core.views import ViewCache, local_views, make_view, pick_views

SPEC = AugmentSpec(hflip=True, translate=1)


def _softmax64(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 numpy (max-shifted)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _standardize64(z: np.ndarray) -> np.ndarray:
    """Logit standardization: (z - mean) / (std with Bessel's correction + 1e-7), per row."""
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


@pytest.mark.parametrize("classes", [2, 3, 7, 8, 10, 15, 16, 100])
def test_softmax_over_classes_is_class_major_only_below_one_vector_and_equals_numpy(classes):
    bits = {"AVX512": 512, "AVX2": 256}.get(torch.backends.cpu.get_cpu_capability(), 0)  # SIMD width of the kernels
    major = 1 < classes < bits // 32  # fewer classes than fp32 lanes in one vector
    z = torch.randn(37, classes) * 4
    assert class_major(z) is major
    got = softmax_classes(z)
    assert got.shape == (37, classes)
    assert got.t().is_contiguous() is major  # the (C, B) transpose is what was computed
    np.testing.assert_allclose(got.double().numpy(), _softmax64(z.double().numpy()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("classes", [5, 10, 16, 40])
@pytest.mark.parametrize("alpha, smoothing", [(0.3, 0.0), (0.5, 0.1), (0.0, 0.0)])
def test_kd_loss_value_and_gradient_are_the_formulas_in_either_layout(classes, alpha, smoothing):
    g = torch.Generator().manual_seed(classes)
    s, t = torch.randn(24, classes, generator=g) * 3, torch.randn(24, classes, generator=g) * 3
    y = torch.randint(0, classes, (24,), generator=g)
    T = 4.0
    s64, t64 = s.double().numpy(), t.double().numpy()
    p_t, q = _softmax64(t64 / T), _softmax64(s64 / T)
    log_p = np.log(_softmax64(s64))
    target = (1 - smoothing) * np.eye(classes)[y.numpy()] + smoothing / classes
    value = alpha * -(target * log_p).sum(1).mean() + (1 - alpha) * T**2 * (p_t * np.log(p_t / q)).sum(1).mean()
    # dL/dz = alpha/B (softmax(z) - t_y) + (1 - alpha) T/B (softmax(z/T) - p_t), from the formula by hand
    grad = alpha / 24 * (_softmax64(s64) - target) + (1 - alpha) * T / 24 * (q - p_t)
    leaf = s.clone().requires_grad_(True)
    loss = kd_loss(leaf, t, y, temperature=T, alpha=alpha, label_smoothing=smoothing)
    loss.backward()
    assert loss.item() == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(leaf.grad.double().numpy(), grad, rtol=1e-4, atol=1e-7)
    assert leaf.grad.is_contiguous()


def _views_and_arrays(views: int = 3, teachers: int = 0, k: int = 10):
    """A view cache of 40 random 1 x 6 x 6 images (random logits stand in for a teacher's): arrays and LocalViews."""
    g = torch.Generator().manual_seed(2)
    x, y, idx = torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, 10, (40,), generator=g), torch.arange(5, 45)
    cache = ViewCache(views=views, spec=SPEC, fill=(0.0,), seed=9, num_classes=10)
    shape = (3, 10) if teachers else (10,)
    values, indices, rest = cache.build(lambda v: torch.randn(len(v), *shape, generator=g) * 3, x, idx, k, batch_size=16)
    return local_views(cache, [x, y, idx, values, indices, rest])


@pytest.mark.parametrize("method, teachers, k", [("kd", 0, 10), ("kd+lskd", 0, 10), ("kd", 3, 10), ("dkd", 0, 4)])
def test_cached_views_soften_the_logits_they_would_give_to_the_written_probabilities(method, teachers, k):
    arrays, local = _views_and_arrays(teachers=teachers, k=k)
    weights = (1.0, 2.0, 5.0) if teachers else (1.0,)
    kd = KDSettings(temperature=3.0, alpha=0.2, method=parse_method(method), teacher_weights=weights)
    soften = view_softener(kd)
    assert view_softener(None) is None and view_softener(KDSettings(temperature=3.0, alpha=1.0)) is None  # CE only
    for epoch in (0, 1):
        plain = list(local.batches(iterate_batches(arrays, 16, shuffle=True, seed=epoch), epoch))
        soft = list(local.batches(iterate_batches(arrays, 16, shuffle=True, seed=epoch), epoch, soften=soften))
        assert len(plain) == len(soft) == 3
        for (x_a, y_a, z_t), (x_b, y_b, p_t) in zip(plain, soft):
            assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)  # the same views of the same examples
            z = z_t.double().numpy()
            if "lskd" in method:
                z = _standardize64(z)
            per = _softmax64(z / 3.0)  # (B, C) or (B, K, C)
            want = per if not teachers else np.einsum("k,bkc->bc", np.array(weights) / sum(weights), per)
            assert p_t.shape == (len(y_b), 10)
            np.testing.assert_allclose(p_t.double().numpy(), want, rtol=1e-5, atol=1e-7)


def test_a_batch_of_softened_views_gives_the_loss_of_its_logits():
    arrays, local = _views_and_arrays()
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 10))
    kd = KDSettings(temperature=4.0, alpha=0.3)
    batch = next(local.batches(iterate_batches(arrays, 16, shuffle=False), 2))
    soft = next(local.batches(iterate_batches(arrays, 16, shuffle=False), 2, soften=view_softener(kd)))
    z_s, p_t = student(batch[0]).detach().double().numpy(), _softmax64(batch[2].double().numpy() / 4.0)
    log_q = np.log(_softmax64(z_s / 4.0))
    ce = -np.log(_softmax64(z_s))[np.arange(16), batch[1].numpy()].mean()
    want = 0.3 * ce + 0.7 * 16.0 * (p_t * (np.log(p_t) - log_q)).sum(1).mean()
    assert batch_loss(student, soft, kd=kd, probs=True).item() == pytest.approx(want, rel=1e-5)
    assert batch_loss(student, batch, kd=kd).item() == pytest.approx(want, rel=1e-5)
    assert F.cross_entropy(student(batch[0]), batch[1]).item() != pytest.approx(want, rel=1e-3)  # the soft term counts


def _expected_epoch_loss(student, x, y, idx, values, cache: ViewCache, epoch: int, kd: KDSettings) -> float:
    """The mean over examples of the written KD loss on each example's view for ``epoch``, rebuilt one
    example at a time with make_view and pick_views (not LocalViews), in float64 numpy."""
    total = 0.0
    for i in range(len(y)):
        v = int(pick_views(cache.seed, [int(idx[i])], epoch, cache.views)[0])
        view = make_view(x[i:i + 1], [int(idx[i])], v, seed=cache.seed, spec=cache.spec, fill=cache.fill)
        z_s = student(view).detach().double().numpy()[0]
        p_t = _softmax64(values[i, v].double().numpy() / kd.temperature)
        log_q, log_p = np.log(_softmax64(z_s / kd.temperature)), np.log(_softmax64(z_s))
        total += kd.alpha * -log_p[int(y[i])] + (1 - kd.alpha) * kd.temperature**2 * (p_t * (np.log(p_t) - log_q)).sum()
    return total / len(y)


def _frozen_run_inputs():
    """40 images, a cache of 3 views with random teacher logits, and KD settings; lr 0 keeps the student fixed."""
    g = torch.Generator().manual_seed(4)
    x, y, idx = torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, 10, (40,), generator=g), torch.arange(40)
    cache = ViewCache(views=3, spec=SPEC, fill=(0.0,), seed=9, num_classes=10)
    values, indices, rest = cache.build(lambda v: torch.randn(len(v), 10, generator=g) * 3, x, idx, 10, batch_size=16)
    return x, y, idx, cache, (values, indices, rest), KDSettings(temperature=4.0, alpha=0.3)


def test_fit_on_cached_views_trains_on_the_written_loss_of_each_epochs_views():
    # lr = 0 keeps the student fixed, so each epoch's mean loss is computable from the formula alone: a
    # teacher softened twice, or logits taken for probabilities, would give other numbers
    x, y, idx, cache, arrays, kd = _frozen_run_inputs()
    torch.manual_seed(0)
    student = build_model("mlp", (1, 6, 6), 10, {"hidden": [8]})
    losses = fit(student, x, y, epochs=2, lr=0.0, batch_size=16, kd=kd, views=cache, view_cache=arrays)
    for epoch, loss in enumerate(losses):
        assert loss == pytest.approx(_expected_epoch_loss(student, x, y, idx, arrays[0], cache, epoch, kd), rel=1e-5)


def test_run_epochs_on_cached_views_trains_on_the_written_loss_of_each_epochs_views():
    x, y, idx, cache, arrays, kd = _frozen_run_inputs()
    spec = StageSpec(stage="student", model_name="mlp", model_args={"hidden": [8]}, input_shape=(1, 6, 6),
                     num_classes=10, epochs=2, lr=0.0, batch_size=16, seed=3, kd=kd, views=cache)
    rows, local = local_views(cache, [x, y, idx, *arrays])
    history = []
    run_epochs(spec, train_batches=lambda e: iterate_batches(rows, 16, shuffle=True, seed=e), val_batches=lambda: [],
               report=lambda metrics, state: history.append(metrics["train_loss"]), views=local)
    student = build_for_spec(spec)  # the same seeded initial weights, unchanged at lr 0
    for epoch, loss in enumerate(history):
        assert loss == pytest.approx(_expected_epoch_loss(student, x, y, idx, arrays[0], cache, epoch, kd), rel=1e-5)
