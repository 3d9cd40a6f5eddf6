"""The KD step's speed paths give the written numbers: class-major softmax for few classes, the fused
KD loss in both layouts, and cached views that hand the loop softened probabilities once per epoch.
Checked against float64 numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raydistill.core.losses import class_major, kd_loss, softmax_classes

def _softmax64(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 numpy (max-shifted)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("classes, major", [(2, False), (3, True), (10, True), (15, True), (16, False), (100, False)])
def test_softmax_over_classes_is_class_major_only_below_one_vector_and_equals_numpy(classes, major):
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
