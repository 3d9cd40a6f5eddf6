"""distill.method (core.methods): each soft term against the paper's formula written independently
in float64 numpy, plus the identities the papers state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raydistill.core.engine import KDSettings, batch_loss
from raydistill.core.methods import Method, dkd_term, kd_term, parse_method, soft_term, standardize


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum_j p_j log(p_j / q_j) per row, 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(axis=-1)


def _dkd_numpy(zs: np.ndarray, pt: np.ndarray, y: np.ndarray, T: float, a: float, b: float) -> float:
    """Zhao et al. 2022, eqs. 1-2: binary target/non-target KL plus the KL of the renormalized
    non-target distributions, times T^2, mean over the batch."""
    qs = _softmax(zs / T)
    rows = np.arange(len(y))
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], axis=1)
    bs = np.stack([qs[rows, y], 1 - qs[rows, y]], axis=1)
    mask = np.ones_like(pt, dtype=bool)
    mask[rows, y] = False
    pt_hat = np.where(mask, pt, 0) / np.where(mask, pt, 0).sum(axis=1, keepdims=True)
    qs_hat = np.where(mask, qs, 0) / np.where(mask, qs, 0).sum(axis=1, keepdims=True)
    nckd = _kl(np.where(mask, pt_hat, 0), np.where(mask, qs_hat, 1))
    return float(np.mean(a * _kl(bt, bs) + b * nckd) * T * T)


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    zs, zt = rng.normal(0, 3, (6, 5)), rng.normal(0, 3, (6, 5))
    y = rng.integers(0, 5, 6)
    return zs, zt, y


def test_parse_method_names_and_refusals():
    assert parse_method("kd") == Method("kd", False) and parse_method("lskd") == Method("kd", True)
    assert parse_method("dkd+lskd") == Method("dkd", True) and parse_method("dkd+lskd").name == "dkd+lskd"
    with pytest.raises(ValueError, match="unknown distillation method 'crd'"):
        parse_method("crd")


def test_standardize_is_the_z_score_with_bessels_std(batch):
    zs, _, _ = batch
    expected = (zs - zs.mean(1, keepdims=True)) / (zs.std(1, ddof=1, keepdims=True) + 1e-7)
    assert np.allclose(standardize(torch.tensor(zs)).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_term_is_t_squared_kl(batch, T):
    zs, zt, _ = batch
    pt = _softmax(zt / T)
    expected = float(np.mean(_kl(pt, _softmax(zs / T)))) * T * T
    assert kd_term(torch.tensor(zs), torch.tensor(pt), T).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("T, a, b", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (2.0, 0.5, 0.0), (4.0, 0.0, 2.0)])
def test_dkd_term_matches_the_papers_formula(batch, T, a, b):
    zs, zt, y = batch
    pt = _softmax(zt / T)
    got = dkd_term(torch.tensor(zs), torch.tensor(pt), torch.tensor(y), T, dkd_alpha=a, dkd_beta=b).item()
    assert got == pytest.approx(_dkd_numpy(zs, pt, y, T, a, b), rel=1e-9)


def test_dkd_decomposes_kd_per_example(batch):
    # The paper's eq. 3: KD = TCKD + (1 - p_t,y) * NCKD for every example.
    zs, zt, y = batch
    T = 3.0
    pt = _softmax(zt / T)
    for i in range(len(y)):
        s, p, label = torch.tensor(zs[i:i + 1]), torch.tensor(pt[i:i + 1]), torch.tensor(y[i:i + 1])
        tckd = dkd_term(s, p, label, T, dkd_alpha=1.0, dkd_beta=0.0).item()
        nckd = dkd_term(s, p, label, T, dkd_alpha=0.0, dkd_beta=1.0).item()
        assert kd_term(s, p, T).item() == pytest.approx(tckd + (1 - pt[i, y[i]]) * nckd, rel=1e-9)


def test_dkd_with_a_one_hot_teacher_is_finite_and_has_no_nckd():
    zs = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    loss = dkd_term(zs, one_hot, torch.tensor([1]), 2.0, dkd_alpha=0.0, dkd_beta=8.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(zs.grad).all()
    q = _softmax(np.array([[2.0, -1.0, 0.5]]) / 2.0)
    tckd = dkd_term(zs, one_hot, torch.tensor([1]), 2.0, dkd_alpha=1.0, dkd_beta=8.0).item()
    assert tckd == pytest.approx(-np.log(q[0, 1]) * 4.0, rel=1e-6)


def test_lskd_ignores_the_scale_and_shift_of_either_models_logits(batch):
    zs, zt, y = batch
    kd = KDSettings(temperature=2.0, alpha=0.0, method=parse_method("kd+lskd"))
    from raydistill.core.engine import teacher_probs

    def term(s, t):
        return soft_term(kd.method, torch.tensor(s), teacher_probs(torch.tensor(t), kd), torch.tensor(y), 2.0).item()

    base = term(zs, zt)
    assert term(3.0 * zs + 5.0, 0.25 * zt - 2.0) == pytest.approx(base, rel=1e-6)  # up to the 1e-7 added to std
    zs_std = (zs - zs.mean(1, keepdims=True)) / (zs.std(1, ddof=1, keepdims=True) + 1e-7)
    zt_std = (zt - zt.mean(1, keepdims=True)) / (zt.std(1, ddof=1, keepdims=True) + 1e-7)
    expected = float(np.mean(_kl(_softmax(zt_std / 2.0), _softmax(zs_std / 2.0)))) * 4.0
    assert base == pytest.approx(expected, rel=1e-9)
    plain = [kd_term(torch.tensor(c * zs), torch.tensor(_softmax(zt / 2.0)), 2.0).item() for c in (1.0, 3.0)]
    assert plain[0] != pytest.approx(plain[1], rel=1e-3)  # what LSKD removes: plain KD depends on the scale


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are its input: the loss sees exactly the hand-built logits."""

    def forward(self, x):
        return x


@pytest.mark.parametrize("method, epoch, warmup", [("dkd", 1, 4), ("dkd", 6, 4), ("kd+lskd", 2, 0)])
def test_batch_loss_mixes_the_hard_ce_and_the_warmed_up_soft_term(batch, method, epoch, warmup):
    zs, zt, y = batch
    alpha, T = 0.3, 2.0
    kd = KDSettings(temperature=T, alpha=alpha, method=parse_method(method), dkd_alpha=1.0, dkd_beta=8.0,
                    warmup_epochs=warmup)
    loss = batch_loss(_Fixed(), (torch.tensor(zs), torch.tensor(y), torch.tensor(zt)), kd=kd, epoch=epoch).item()
    ce = float(np.mean(-np.log(_softmax(zs)[np.arange(len(y)), y])))
    w = 1.0 if warmup == 0 else min(epoch / warmup, 1.0)
    if method == "dkd":
        soft = _dkd_numpy(zs, _softmax(zt / T), y, T, 1.0, 8.0)
    else:
        z = lambda v: (v - v.mean(1, keepdims=True)) / (v.std(1, ddof=1, keepdims=True) + 1e-7)  # noqa: E731
        soft = float(np.mean(_kl(_softmax(z(zt) / T), _softmax(z(zs) / T)))) * T * T
    assert loss == pytest.approx(alpha * ce + (1 - alpha) * w * soft, rel=1e-6)


def test_plain_kd_takes_the_same_value_and_gradient_through_either_path(batch):
    # kd without a warm-up uses the fused autograd node (losses._KDLoss); with a warm-up the generic one.
    zs, zt, y = batch
    grads = []
    for warmup in (0, 1):
        logits = torch.tensor(zs, requires_grad=True)
        kd = KDSettings(temperature=4.0, alpha=0.2, warmup_epochs=warmup)
        loss = batch_loss(_Fixed(), (logits, torch.tensor(y), torch.tensor(zt)), kd=kd, epoch=1)
        loss.backward()
        grads.append((loss.item(), logits.grad.clone()))
    # (the teacher's logits enter as float32 either way, as cached logits do)
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6) and torch.allclose(grads[0][1], grads[1][1], atol=1e-7)
