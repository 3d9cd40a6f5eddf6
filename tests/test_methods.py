"""distill.method (core.methods): each soft term against the paper's formula written independently
in float64 numpy, plus the identities the papers state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raydistill.core.engine import KDSettings, batch_loss
from raydistill.core.methods import Method, dist_term, dkd_term, kd_term, parse_method, soft_term, standardize


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


def _dist_numpy(ps: np.ndarray, pt: np.ndarray, T: float, b: float, g: float) -> float:
    """Huang et al. 2022, eqs. 4-7: 1 - Pearson per example (rows) and per class (columns, across the
    batch), weighted b and g, times T^2; numpy's corrcoef as the correlation."""
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(len(ps))])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(ps.shape[1])])
    return float((b * inter + g * intra) * T * T)


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    zs, zt = rng.normal(0, 3, (6, 5)), rng.normal(0, 3, (6, 5))
    y = rng.integers(0, 5, 6)
    return zs, zt, y


def test_parse_method_names_and_refusals():
    assert parse_method("kd") == Method("kd", False) and parse_method("lskd") == Method("kd", True)
    assert parse_method("dkd+lskd") == Method("dkd", True) and parse_method("dkd+lskd").name == "dkd+lskd"
    assert parse_method("dist") == Method("dist", False) and parse_method("dist+lskd") == Method("dist", True)
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


@pytest.mark.parametrize("T, b, g", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (2.0, 2.0, 0.5), (4.0, 0.0, 1.0)])
def test_dist_term_matches_the_papers_formula(batch, T, b, g):
    zs, zt, _ = batch
    pt = _softmax(zt / T)
    got = dist_term(torch.tensor(zs), torch.tensor(pt), T, dist_beta=b, dist_gamma=g).item()
    assert got == pytest.approx(_dist_numpy(_softmax(zs / T), pt, T, b, g), rel=1e-6)  # up to the 1e-8 eps


def test_dist_ignores_what_kd_punishes_and_has_no_class_term_for_one_example(batch):
    zs, _, _ = batch
    T = 2.0
    ps = _softmax(zs / T)
    # the teacher's probabilities as any positive affine map of the student's: correlation 1, DIST 0; KD is not 0
    pt = 0.5 * ps + 0.5 / ps.shape[1]
    assert dist_term(torch.tensor(zs), torch.tensor(pt), T, dist_beta=1.0, dist_gamma=1.0).item() == pytest.approx(
        0.0, abs=1e-5)  # the 1e-8 eps over norms of ~1e-2
    assert kd_term(torch.tensor(zs), torch.tensor(pt), T).item() > 1e-3
    # one example: a class column has no spread, so only the inter-class term (rows) counts
    one = dist_term(torch.tensor(zs[:1]), torch.tensor(_softmax(zs[1:2] / T)), T, dist_beta=1.0, dist_gamma=5.0)
    assert one.item() == pytest.approx((1 - np.corrcoef(ps[0], _softmax(zs[1] / T))[0, 1]) * T * T, rel=1e-6)


def test_the_card_records_dists_weights_and_not_dkds():
    from raydistill.core.cards import distillation_record
    from raydistill.core.config import load_config

    record = distillation_record(load_config(None, ["distill.method=dist+lskd", "distill.dist_beta=2"]).distill)
    assert (record["method"], record["dist_beta"], record["dist_gamma"]) == ("dist+lskd", 2.0, 1.0)
    assert "dkd_beta" not in record
    dkd = distillation_record(load_config(None, ["distill.method=dkd", "distill.dkd_warmup_epochs=2"]).distill)
    assert {k: dkd[k] for k in ("method", "dkd_alpha", "dkd_beta", "dkd_warmup_epochs")} == {
        "method": "dkd", "dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_warmup_epochs": 2} and "dist_beta" not in dkd
    fitnet = distillation_record(load_config(None, ["distill.method=fitnet", "distill.mode=online"]).distill)
    assert (fitnet["hint_weight"], fitnet["hint_layer"], fitnet["guided_layer"]) == (100.0, "auto", "auto")


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are its input: the loss sees exactly the hand-built logits."""

    def forward(self, x):
        return x


@pytest.mark.parametrize("method, epoch, warmup", [("dkd", 1, 4), ("dkd", 6, 4), ("kd+lskd", 2, 0),
                                                  ("dist", 3, 0), ("dist+lskd", 1, 2)])
def test_batch_loss_mixes_the_hard_ce_and_the_warmed_up_soft_term(batch, method, epoch, warmup):
    zs, zt, y = batch
    alpha, T = 0.3, 2.0
    kd = KDSettings(temperature=T, alpha=alpha, method=parse_method(method), dkd_alpha=1.0, dkd_beta=8.0,
                    dist_beta=1.5, dist_gamma=0.5, warmup_epochs=warmup)
    loss = batch_loss(_Fixed(), (torch.tensor(zs), torch.tensor(y), torch.tensor(zt)), kd=kd, epoch=epoch).item()
    ce = float(np.mean(-np.log(_softmax(zs)[np.arange(len(y)), y])))
    w = 1.0 if warmup == 0 else min(epoch / warmup, 1.0)
    z = lambda v: (v - v.mean(1, keepdims=True)) / (v.std(1, ddof=1, keepdims=True) + 1e-7)  # noqa: E731
    if method == "dkd":
        soft = _dkd_numpy(zs, _softmax(zt / T), y, T, 1.0, 8.0)
    elif method == "dist":
        soft = _dist_numpy(_softmax(zs / T), _softmax(zt / T), T, 1.5, 0.5)
    elif method == "dist+lskd":
        soft = _dist_numpy(_softmax(z(zs) / T), _softmax(z(zt) / T), T, 1.5, 0.5)
    else:
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


# --- fitnet (core.hints): the hint term against the formula written out by hand ---

def _mlp_pair(seed: int = 0):
    """A student MLP (8 -> 6 -> 3) and a teacher MLP (8 -> 10 -> 3), as nn.Sequential."""
    torch.manual_seed(seed)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    return student, teacher


def test_fitnet_auto_hint_is_the_mse_of_the_connected_penultimate_features():
    from raydistill.core.hints import Hint

    student, teacher = _mlp_pair()
    hint = Hint(student, teacher, (1, 2, 4))  # auto: the inputs of each model's last Linear
    x = torch.randn(5, 1, 2, 4)
    student(x), teacher(x)
    # by hand: ReLU(W1 x + b1) of each model, the student's through the connector's W, b
    xs = x.reshape(5, 8).double().numpy()
    feat = lambda m: np.maximum(xs @ m[1].weight.double().detach().numpy().T + m[1].bias.double().detach().numpy(), 0)  # noqa: E731
    w, b = (t.double().detach().numpy() for t in (hint.connector.weight, hint.connector.bias))
    expected = np.mean((feat(student) @ w.T + b - feat(teacher)) ** 2)
    assert hint.connector.weight.shape == (10, 6)
    assert hint().item() == pytest.approx(expected, rel=1e-5)


def test_fitnet_maps_of_different_sizes_are_pooled_and_connected_by_a_1x1_conv():
    from raydistill.core.hints import Hint

    torch.manual_seed(1)
    student = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 3))
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 4 * 4, 3))
    hint = Hint(student, teacher, (1, 8, 8), student_layer="0", teacher_layer="1").eval()  # (2, 8, 8) -> (4, 4, 4)
    x = torch.randn(3, 1, 8, 8)
    student(x), teacher(x)
    h_s = student[0](x).detach().double().numpy()  # (3, 2, 8, 8)
    pooled = h_s.reshape(3, 2, 4, 2, 4, 2).mean(axis=(3, 5))  # 2x2 average pooling to 4x4, by hand
    conv_w = hint.connector[0].weight.detach().double().numpy()[:, :, 0, 0]  # (4, 2)
    bn = hint.connector[1]  # eval: running mean 0, var 1 (fresh)
    mapped = np.einsum("oc,bchw->bohw", conv_w, pooled) / np.sqrt(1 + bn.eps)
    h_t = teacher[1](teacher[0](x)).detach().double().numpy()
    assert hint().item() == pytest.approx(np.mean((mapped - h_t) ** 2), rel=1e-5)


def test_fitnet_refuses_unknown_layers_and_unmappable_shapes():
    from raydistill.core.hints import Hint, HintError

    student, teacher = _mlp_pair()
    with pytest.raises(HintError, match=r"student \(distill.guided_layer\) has no layer 'layer9'; its top-level layers: 0, 1, 2, 3"):
        Hint(student, teacher, (1, 2, 4), student_layer="layer9")
    conv_teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(HintError, match=r"shape \[6\] onto a teacher feature of shape \[2, 2, 4\]"):
        Hint(student, conv_teacher, (1, 2, 4), teacher_layer="0")


def test_fitnet_batch_loss_adds_the_weighted_hint_to_kd(batch):
    from raydistill.core.hints import Hint

    student, teacher = _mlp_pair()
    hint = Hint(student, teacher, (1, 2, 4))
    x, y = torch.randn(4, 1, 2, 4), torch.tensor([0, 1, 2, 1])
    kd = KDSettings(temperature=2.0, alpha=0.3, method=parse_method("fitnet"), hint_weight=7.0)
    loss = batch_loss(student, (x, y), kd=kd, teachers=[teacher], hint=hint).item()
    zs, zt = student(x).detach().double().numpy(), teacher(x).detach().double().numpy()  # taps now hold x's features
    ce = float(np.mean(-np.log(_softmax(zs)[np.arange(4), y.numpy()])))
    soft = float(np.mean(_kl(_softmax(zt / 2.0), _softmax(zs / 2.0)))) * 4.0
    assert loss == pytest.approx(0.3 * ce + 0.7 * soft + 7.0 * hint().item(), rel=1e-5)


def _hint_residual(student, teacher, x: np.ndarray) -> float:
    """How well the best affine map of the student's penultimate features predicts the teacher's:
    the least-squares residual per feature (numpy, closed form)."""
    xs = torch.as_tensor(x).reshape(len(x), -1)
    f = lambda m: torch.relu(m[1](xs)).detach().double().numpy()  # noqa: E731
    a = np.hstack([f(student), np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(a, f(teacher), rcond=None)
    return float(np.mean((a @ coef - f(teacher)) ** 2))


def _hooks(model: torch.nn.Module) -> int:
    """Forward hooks on any module of ``model`` (torch's own registries, counted)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_fitnet_fit_pulls_the_students_features_toward_the_teachers_and_leaves_the_teacher_alone():
    import copy

    from raydistill.core.engine import fit

    student, teacher = _mlp_pair(3)
    x = torch.randn(256, 1, 2, 4).numpy()
    y = np.random.default_rng(0).integers(0, 3, 256)
    teacher_before = copy.deepcopy(teacher.state_dict())
    residual = {"init": _hint_residual(student, teacher, x)}
    for method, weight in (("kd", 0.0), ("fitnet", 10.0)):
        model = copy.deepcopy(student)
        kd = KDSettings(temperature=4.0, alpha=0.5, method=parse_method(method), hint_weight=weight)
        losses = fit(model, x, y, epochs=20, lr=1e-2, batch_size=32, seed=0, kd=kd, teachers=[teacher])
        assert all(np.isfinite(losses))
        residual[method] = _hint_residual(model, teacher, x)
    # the hint term makes the student's features an affine image of the teacher's, KD alone does not
    assert residual["fitnet"] < 0.5 * min(residual["init"], residual["kd"]), residual
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    # fit() took its taps off the caller's teacher again
    assert _hooks(teacher) == 0


def test_fitnet_fit_that_fails_mid_training_still_takes_its_taps_off_the_teacher():
    from raydistill.core.engine import fit

    student, teacher = _mlp_pair(4)
    x = torch.randn(64, 1, 2, 4).numpy()
    y = np.random.default_rng(1).integers(0, 3, 64)
    y[40] = 7  # a label outside the 3 classes: cross-entropy fails on the batch that holds it
    kd = KDSettings(temperature=4.0, alpha=0.5, method=parse_method("fitnet"), hint_weight=1.0)
    assert _hooks(teacher) == 0
    with pytest.raises((IndexError, RuntimeError)):
        fit(student, x, y, epochs=2, lr=1e-2, batch_size=16, seed=0, kd=kd, teachers=[teacher])
    assert _hooks(teacher) == 0 and _hooks(student) == 0


def test_fitnet_run_epochs_that_fails_after_an_epoch_still_takes_its_taps_off_the_teacher():
    from raydistill.core.loop import StageSpec, run_epochs
    from raydistill.core.engine import iterate_batches
    from raydistill.core.models import build_model

    torch.manual_seed(0)
    teacher = build_model("mlp", (1, 4, 4), 3, {"hidden": [12]})
    x, y = torch.randn(48, 1, 4, 4).numpy(), np.random.default_rng(2).integers(0, 3, 48)
    kd = KDSettings(temperature=2.0, alpha=0.5, method=parse_method("fitnet"), hint_weight=1.0)
    spec = StageSpec(stage="student", model_name="mlp", model_args={"hidden": [6]}, input_shape=(1, 4, 4),
                     num_classes=3, epochs=3, lr=0.01, batch_size=16, seed=0, kd=kd)
    epochs = []

    def report_then_die(metrics, state):
        epochs.append(metrics["epoch"])
        raise ConnectionError("the driver went away")  # as a lost Ray Train session would

    with pytest.raises(ConnectionError):
        run_epochs(spec, train_batches=lambda e: iterate_batches([x, y], 16, shuffle=True, seed=e),
                   val_batches=lambda: iterate_batches([x, y], 48, shuffle=False), report=report_then_die,
                   teachers=[teacher])
    assert epochs == [1] and _hooks(teacher) == 0


def test_fitnet_needs_online_one_teacher_and_no_tune_sweep(tmp_path):
    from raydistill.core.config import ConfigError, load_config
    from raydistill.core.preflight import preflight

    with pytest.raises(ConfigError, match="distill.mode: method fitnet"):
        load_config(None, ["distill.method=fitnet", "distill.mode=cached"])
    with pytest.raises(ConfigError, match="distill.teachers: method fitnet takes its hint from one teacher"):
        load_config(None, ["distill.method=fitnet", "distill.mode=online",
                           "distill.teachers=[{artifact: a}, {artifact: b}]"])
    with pytest.raises(ConfigError, match="tune.method: Tune's trials distill from cached soft targets"):
        load_config(None, ["tune.method=[kd, fitnet]"])
    with pytest.raises(ConfigError, match="distill.hint_weight"):
        load_config(None, ["distill.method=fitnet", "distill.mode=online", "distill.hint_weight=-1"])
    cfg = load_config(None, ["distill.method=fitnet", "distill.mode=online", "run.quiet=true"])
    with pytest.raises(ConfigError, match="distill.method: Tune's trials"):
        preflight(cfg, "tune")
    assert parse_method("fitnet") == Method("kd", False, True) and parse_method("fitnet").name == "fitnet"


@pytest.mark.parametrize("augment", ["{hflip: true}", "{mixup: 0.5}"])
def test_a_sweep_with_augmented_inputs_needs_cached_views_not_clean_logits(augment):
    # trials train on logits cached once (tuning.inputs), so distill.mode=online with augmentation would
    # pair flipped or mixed images with the teacher's logits of the clean ones: refused before any work
    from raydistill.core.config import ConfigError, load_config
    from raydistill.core.preflight import preflight

    sets = ["data.name=synthetic", "distill.mode=online", f"distill.augment={augment}", "run.quiet=true"]
    for stage, extra in (("tune", []), ("pipeline", ["pipeline.tune=true"])):
        with pytest.raises(ConfigError, match=r"distill.augment: Tune's trials .* set distill.mode=cached and "
                                              r"distill.cached_views=K"):
            preflight(load_config(None, [*sets, *extra]), stage)
    assert preflight(load_config(None, [*sets, "pipeline.tune=false"]), "pipeline") is not None  # no sweep
    views = load_config(None, [*sets[:-2], "distill.mode=cached", "distill.cached_views=2",
                               f"distill.augment={augment}", "run.quiet=true"])
    assert preflight(views, "tune") is not None


@pytest.mark.parametrize("method", ["kd", "lskd", "dkd", "dkd+lskd", "dist", "dist+lskd"])
def test_the_plain_grid_search_baseline_trains_on_the_written_formulas(batch, method):
    # benchmarks/plain_tune.py (the script raydistill tune is timed against) writes each loss out on its
    # own; the timing comparison holds only if it optimizes the same objective: check it, float64,
    # against the papers' formulas (numpy), DKD with its default weights 1 and 8.
    from conftest import load_benchmark

    plain = load_benchmark("plain_tune")  # it imports plain_torch beside it
    zs, zt, y = batch
    T = 2.0
    z = lambda v: (v - v.mean(1, keepdims=True)) / (v.std(1, ddof=1, keepdims=True) + 1e-7)  # noqa: E731
    s, t = (z(zs), z(zt)) if method.endswith("lskd") else (zs, zt)
    if method.startswith("dkd"):
        expected = _dkd_numpy(s, _softmax(t / T), y, T, 1.0, 8.0)
    elif method.startswith("dist"):
        expected = _dist_numpy(_softmax(s / T), _softmax(t / T), T, 1.0, 1.0)
    else:
        expected = float(np.mean(_kl(_softmax(t / T), _softmax(s / T)))) * T * T
    got = plain.soft(method, torch.tensor(zs), torch.tensor(zt), torch.tensor(y), T).item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.ray  # starts its own Ray runtime in a subprocess
def test_kd_methods_on_ray_tasks_gives_each_row_what_one_thread_in_process_gives(tmp_path):
    # benchmarks/kd_methods.py --workers 2 runs its trainings as one-CPU Ray tasks, a row starting when its
    # inputs (teacher -> view cache -> kd on views) are done; in process on one thread (the reference) the
    # same rows run one after another. Same seeds, same init, same batches, same kernels: same accuracies.
    import json
    import subprocess
    import sys

    from conftest import REPO

    def rows(*extra: str) -> dict:
        args = ["--seeds", "0", "--rows", "kd", "kd views=4", "--student-epochs", "1", "--views-epochs", "2",
                "--alone-augment", "{hflip: true}", "--set", "data.train_limit=2000", "--set", "teacher.epochs=1",
                "--set", "distill.student={name: cnn, args: {channels: [4, 8], fc: 256}}",
                "--set", "teacher.model.args.fc=1024", "--teacher-cache", str(tmp_path / "teachers"), *extra]
        proc = subprocess.run([sys.executable, "benchmarks/kd_methods.py", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = json.loads(proc.stdout.strip().splitlines()[-1])["results"][0]
        return {k: v for k, v in found.items() if not k.endswith("_s")}, proc.stdout

    in_process, _ = rows("--workers", "1", "--threads", "1")
    on_ray, out = rows("--workers", "2")
    wanted = {"teacher", "alone", "kd", "alone+aug", "kd views=4", "alone+other"}
    assert wanted <= set(in_process) and in_process["teacher_cached"] is False
    assert on_ray["teacher_cached"] is True  # the second run read the first one's teacher
    assert {k: on_ray[k] for k in wanted} == {k: in_process[k] for k in wanted}
    assert "2 Ray tasks at a time, 1 thread each" in out
