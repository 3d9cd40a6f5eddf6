"""Multi-teacher ensembles: the mixture equals single-teacher KD in the degenerate cases, weights
are normalized, class-list mismatches name both artifacts, several teachers train in one call,
and a real Ray Train distillation from two teachers records both as weighted parents."""
import copy

import numpy as np
import pytest
import torch

from raydistill.core.artifacts import ArtifactError, load_state, new_artifact_path, save_artifact
from raydistill.core.config import DataSection, load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, batch_loss, evaluate, fit, predict_logits, teacher_probs
from raydistill.core.losses import ensemble_soft_targets, kd_loss, kd_loss_from_probs
from raydistill.core.models import build_model
from raydistill.training.soft_targets import TeacherLogits
from raydistill.training.teachers import ensemble_override, parallel_slots, schedule_message, teacher_runs

from conftest import REPO, make_local_artifact, tiny_overrides

DIGITS = str(REPO / "configs" / "digits.yaml")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSection(), 0)


@pytest.fixture(scope="module")
def two_teachers(digits):
    """Two small trained teachers (different seeds) and their cached train logits ``(N, C)``."""
    teachers, logits = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        t = build_model("mlp", digits.input_shape, 10, {"hidden": [64]})
        fit(t, digits.x_train, digits.y_train, epochs=2, lr=1e-2, batch_size=64, seed=seed)
        teachers.append(t.eval())
        logits.append(predict_logits(t, digits.x_train))
    return teachers, logits


def _student(digits, seed=3):
    torch.manual_seed(seed)
    return build_model("mlp", digits.input_shape, 10, {"hidden": [16]})


def _train(digits, student, **kw):
    fit(student, digits.x_train, digits.y_train, epochs=2, lr=1e-2, batch_size=64, seed=5, **kw)
    return [p.detach().clone() for p in student.parameters()]


def _logits(n=6, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


# --- independent references: the written formulas in float64 numpy --------------------------------

def _softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _mixture64(teacher_logits, weights, T):
    """``p = sum_k w_k softmax(z_k / T) / sum_k w_k``, by hand."""
    return sum(w * _softmax64(np.asarray(z, dtype=np.float64) / T) for z, w in zip(teacher_logits, weights)) / sum(weights)


def _kd64(s, p, y, *, T, alpha):
    """``alpha * CE(z_s, y) + (1 - alpha) * T^2 * mean_i KL(p || softmax(z_s / T))`` for target probabilities p."""
    s = np.asarray(s, dtype=np.float64)
    ce = -np.log(_softmax64(s)[np.arange(len(s)), np.asarray(y)]).mean()
    p = np.asarray(p, dtype=np.float64)
    kl = (p * (np.log(p) - np.log(_softmax64(s / T)))).sum(axis=-1).mean()
    return alpha * ce + (1.0 - alpha) * T**2 * kl


# --- the loss ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weight", [1.0, 0.3, 7.0])
def test_one_teacher_ensemble_loss_equals_single_teacher_kd(weight):
    s, t, y = _logits()
    expected_p = _softmax64(t.numpy() / 4.0)  # an ensemble of one is softmax(z / T), whatever its weight
    expected = _kd64(s.numpy(), expected_p, y.numpy(), T=4.0, alpha=0.3)
    single = kd_loss(s, t, y, temperature=4.0, alpha=0.3)
    mixed = kd_loss_from_probs(s, ensemble_soft_targets([t], [weight], 4.0), y, temperature=4.0, alpha=0.3)
    via_engine = teacher_probs(t.unsqueeze(1), KDSettings(temperature=4.0, alpha=0.3, teacher_weights=(weight,)))
    assert single.item() == pytest.approx(expected, rel=1e-5)
    assert mixed.item() == pytest.approx(expected, rel=1e-5)
    assert np.allclose(via_engine.numpy(), expected_p, atol=1e-7)
    assert torch.equal(single, mixed)  # and exactly the single-teacher number (README: "exactly")


def test_two_identical_teachers_give_the_one_teacher_targets_and_loss():
    s, t, y = _logits(seed=1)
    expected_p = _softmax64(t.numpy() / 2.0)
    one = ensemble_soft_targets([t], [1.0], 2.0)
    two = ensemble_soft_targets([t, t.clone()], [1.0, 1.0], 2.0)
    skewed = ensemble_soft_targets([t, t.clone()], [0.2, 0.8], 2.0)
    for probs in (one, two, skewed):
        assert np.allclose(probs.numpy(), expected_p, atol=1e-7)
    assert torch.equal(one, two)  # 0.5 * p + 0.5 * p is exact in floating point
    expected = _kd64(s.numpy(), expected_p, y.numpy(), T=2.0, alpha=0.1)
    single = kd_loss(s, t, y, temperature=2.0, alpha=0.1)
    assert single.item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss_from_probs(s, two, y, temperature=2.0, alpha=0.1).item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(single, kd_loss_from_probs(s, two, y, temperature=2.0, alpha=0.1))


def test_weights_are_normalized_and_mixture_is_a_distribution():
    _, a, _ = _logits(seed=2)
    b = torch.zeros_like(a)  # uniform teacher
    raw = ensemble_soft_targets([a, b], [2.0, 6.0], 1.0)
    normalized = ensemble_soft_targets([a, b], [0.25, 0.75], 1.0)
    # by hand: w = (2, 6) / 8 = (0.25, 0.75); the uniform teacher contributes 0.75 * 1/C per class
    expected = 0.25 * _softmax64(a.numpy()) + 0.75 * np.full(a.shape, 0.1)
    assert np.allclose(raw.numpy(), expected, atol=1e-7)
    assert np.allclose(normalized.numpy(), expected, atol=1e-7)
    assert np.allclose(raw.numpy(), _mixture64([a.numpy(), b.numpy()], [2.0, 6.0], 1.0), atol=1e-7)
    assert np.allclose(raw.numpy().sum(-1), 1.0, atol=1e-6)


def test_weight_count_mismatch_names_both_counts():
    _, a, _ = _logits()
    with pytest.raises(ValueError, match="2 teachers' logits and 1 weights"):
        teacher_probs(torch.stack([a, a], dim=1), KDSettings(temperature=2.0, alpha=0.5, teacher_weights=(1.0,)))


# --- training through the engine ----------------------------------------------------------------

def _reference_kd_training(digits, student, teacher_logits, weights, *, T, alpha, epochs=2, lr=1e-2,
                           batch_size=64, seed=5):
    """What ``_train`` should do, written out independently of the engine and the loss module:
    Adam at a constant lr, each epoch the seeded shuffle ``randperm(N, seed + epoch)`` in batches,
    and the loss spelled out with explicit tensor ops on the mixture sum_k w_k softmax(z_k/T) / sum w
    (autograd, not the fused closed-form gradient)."""
    x, y = torch.as_tensor(digits.x_train), torch.as_tensor(digits.y_train)
    zs = [torch.as_tensor(z) for z in teacher_logits]
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    student.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            p = sum(w * torch.exp(z[idx] / T - torch.logsumexp(z[idx] / T, dim=1, keepdim=True))
                    for z, w in zip(zs, weights)) / sum(weights)
            logits = student(x[idx])
            log_q = logits / T - torch.logsumexp(logits / T, dim=1, keepdim=True)
            log_p_s = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            ce = -log_p_s[torch.arange(len(idx)), y[idx]].mean()
            kl = (p * (torch.log(p) - log_q)).sum(dim=1).mean()
            loss = alpha * ce + (1.0 - alpha) * T**2 * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return [p.detach().clone() for p in student.parameters()]


@pytest.fixture(scope="module")
def reference_student(digits, two_teachers):
    """The student distilled from teacher 0 (T=4, alpha=0.1) by the hand-written reference loop."""
    _, logits = two_teachers
    return _reference_kd_training(digits, _student(digits), [logits[0]], [1.0], T=4.0, alpha=0.1)


def _close(params, expected):
    return all(torch.allclose(p, q, atol=1e-5) for p, q in zip(params, expected))


def test_the_reference_loop_is_sensitive_to_the_teacher(digits, two_teachers, reference_student):
    # Guard against a reference that cannot fail: another teacher gives visibly different weights.
    _, logits = two_teachers
    other = _reference_kd_training(digits, _student(digits), [logits[1]], [1.0], T=4.0, alpha=0.1)
    assert not _close(other, reference_student)


def test_one_teacher_ensemble_trains_the_same_student_bitwise(digits, two_teachers, reference_student):
    # Prepare: the same student twice; cached logits as (N, C) and as an ensemble of one (N, 1, C).
    _, logits = two_teachers
    a, b = _student(digits), _student(digits)
    # Execute
    single = _train(digits, a, kd=KDSettings(temperature=4.0, alpha=0.1), teacher_logits=logits[0])
    ensemble = _train(digits, b, kd=KDSettings(temperature=4.0, alpha=0.1, teacher_weights=(0.4,)),
                      teacher_logits=logits[0][:, None, :])
    # Assert: both match the independent reference, and each other exactly.
    assert _close(single, reference_student)
    assert _close(ensemble, reference_student)
    assert all(torch.equal(p, q) for p, q in zip(single, ensemble))
    assert evaluate(a, digits.x_test, digits.y_test)["accuracy"] > 0.7


def test_two_identical_teachers_train_the_same_student_as_one_cached_and_online(digits, two_teachers,
                                                                               reference_student):
    teachers, logits = two_teachers
    kd_one = KDSettings(temperature=4.0, alpha=0.1)
    kd_two = KDSettings(temperature=4.0, alpha=0.1, teacher_weights=(1.0, 1.0))
    one = _train(digits, _student(digits), kd=kd_one, teacher_logits=logits[0])
    cached_two = _train(digits, _student(digits), kd=kd_two, teacher_logits=np.stack([logits[0]] * 2, axis=1))
    online_two = _train(digits, _student(digits), kd=kd_two, teachers=[teachers[0], copy.deepcopy(teachers[0])])
    for params in (one, cached_two, online_two):
        assert _close(params, reference_student)
    assert all(torch.equal(p, q) for p, q in zip(one, cached_two))
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(one, online_two))


def test_cached_and_online_ensembles_agree_and_differ_from_each_single_teacher(digits, two_teachers):
    # Prepare: a 2-teacher ensemble weighted 3:1, cached (N, 2, C) and online.
    teachers, logits = two_teachers
    kd = KDSettings(temperature=4.0, alpha=0.1, teacher_weights=(3.0, 1.0))
    batch = tuple(torch.as_tensor(v[:64]) for v in (digits.x_train, digits.y_train))
    stacked = torch.as_tensor(np.stack(logits, axis=1)[:64])
    # Execute
    student = _student(digits)
    cached = batch_loss(student, (*batch, stacked), kd=kd)
    online = batch_loss(student, batch, kd=kd, teachers=teachers)
    single = batch_loss(student, (*batch, stacked[:, 0]), kd=KDSettings(temperature=4.0, alpha=0.1))
    # Assert: both equal the written formula on the hand-mixed targets (weights 3:1 -> 0.75, 0.25).
    with torch.no_grad():
        z_s = student(batch[0]).numpy()
    p = _mixture64([stacked[:, 0].numpy(), stacked[:, 1].numpy()], [3.0, 1.0], 4.0)
    expected = _kd64(z_s, p, batch[1].numpy(), T=4.0, alpha=0.1)
    assert cached.item() == pytest.approx(expected, rel=1e-5)
    assert online.item() == pytest.approx(expected, rel=1e-5)
    assert single.item() == pytest.approx(_kd64(z_s, _softmax64(stacked[:, 0].numpy() / 4.0), batch[1].numpy(),
                                                T=4.0, alpha=0.1), rel=1e-5)
    assert cached.item() != pytest.approx(single.item(), rel=1e-3)


def test_soft_target_mapper_emits_one_logit_row_per_teacher(digits, two_teachers, tmp_path):
    # Prepare: the Ray Data callable (plain class, no Ray needed) with two teacher artifacts.
    teachers, _ = two_teachers
    pairs = []
    for i, t in enumerate(teachers):
        path = make_local_artifact(tmp_path / str(i), kind="teacher", model_args={"hidden": [8]}, epochs=1, seed=i)
        state, card = load_state(path)
        pairs.append((card, {k: v.numpy() for k, v in state.items()}))
    # Execute
    out = TeacherLogits(pairs)({"x": digits.x_train[:32].copy(), "y": digits.y_train[:32]})
    # Assert: (B, K, C), each slice the corresponding teacher's logits.
    assert out["logits"].shape == (32, 2, 10)
    for k, (card, state) in enumerate(pairs):
        model = build_model("mlp", digits.input_shape, 10, {"hidden": [8]})
        model.load_state_dict({n: torch.as_tensor(v) for n, v in state.items()})
        assert np.allclose(out["logits"][:, k], predict_logits(model, digits.x_train[:32]), atol=1e-6)


# --- loading teachers --------------------------------------------------------------------------

def _relabelled_copy(path, storage):
    """A copy of artifact ``path`` whose card claims other class names (same weights)."""
    state, card = load_state(path)
    card = {k: v for k, v in card.items() if k not in ("weights_sha256", "parameters", "path")}
    card["class_names"] = [f"glyph-{i}" for i in range(len(card["class_names"]))]
    return save_artifact(new_artifact_path(storage, "teacher"), state, card)


def test_teachers_with_different_class_lists_fail_naming_both(local_teacher, storage, digits):
    from raydistill.training.driver import load_teachers

    other = _relabelled_copy(local_teacher, storage)
    cfg = load_config(DIGITS, [f"run.storage_path={storage}", ensemble_override([local_teacher, other])])
    with pytest.raises(ArtifactError) as err:
        load_teachers(cfg, digits)
    message = str(err.value)
    assert str(local_teacher) in message and str(other) in message and "glyph-0" in message


def test_load_teachers_keeps_order_and_weights(local_teacher, storage, digits):
    from raydistill.training.driver import load_teachers

    second = make_local_artifact(storage, kind="teacher", model_args={"hidden": [16]}, epochs=1, seed=1)
    cfg = load_config(DIGITS, [f"run.storage_path={storage}", ensemble_override([local_teacher, second], [2, 0.5])])
    loaded = load_teachers(cfg, digits)
    assert [(p, w) for p, _, _, w in loaded] == [(local_teacher, 2.0), (second, 0.5)]
    assert loaded[1][1]["architecture"]["args"] == {"hidden": [16]}


# --- several teachers in one call ---------------------------------------------------------------

def test_teacher_runs_cross_architectures_with_seeds():
    cfg = load_config(DIGITS, ["teacher.seeds=[0, 1]", "teacher.models=[{name: mlp, args: {hidden: [64]}}, {name: cnn_small}]"])
    runs = teacher_runs(cfg)
    assert [(r.model.name, r.seed) for r in runs] == [("mlp", 0), ("mlp", 1), ("cnn_small", 0), ("cnn_small", 1)]
    default = teacher_runs(load_config(DIGITS, ["run.seed=7"]))
    assert [(r.model, r.seed) for r in default] == [(cfg.teacher.model, 7)]


@pytest.mark.parametrize("runs,workers,cpus,slots", [(3, 1, 2, 2), (2, 2, 2, 1), (4, 2, 8, 4), (1, 1, 16, 1), (3, 4, 2, 1)])
def test_parallel_slots_fit_runs_into_cpus(runs, workers, cpus, slots):
    assert parallel_slots(runs, workers, cpus) == slots


def test_schedule_message_says_parallel_or_sequential():
    runs = teacher_runs(load_config(DIGITS, ["teacher.seeds=[0, 1, 2]"]))
    assert "in parallel, 2 at a time" in schedule_message(runs, 2, 1, 2)
    assert "sequentially" in schedule_message(runs, 1, 2, 2)


def test_bad_teacher_model_in_list_fails_preflight_naming_the_index():
    from raydistill.core.config import ConfigError
    from raydistill.core.preflight import preflight

    cfg = load_config(DIGITS, ["teacher.models=[{name: mlp}, {name: resnet18x}]"])
    with pytest.raises(ConfigError, match=r"teacher.models\[1\].name: unknown model 'resnet18x'"):
        preflight(cfg, "teacher")


# --- Ray: two teachers trained in one call, then one student distilled from both -----------------

@pytest.mark.ray
@pytest.mark.timeout(180)
def test_two_parallel_teachers_then_cached_ensemble_distillation_records_weighted_parents(ray_session, storage, capsys):
    from raydistill.core.artifacts import load_card
    from raydistill.training.teachers import train_teachers
    from raydistill.training.driver import distill_student

    # Prepare + Execute: 2 teachers as parallel Ray Train runs (2 CPUs, 1 worker each).
    from raydistill.cli.console import attach_console

    attach_console()  # as the CLI does: the schedule line is logged, the console shows it
    base = tiny_overrides(storage, epochs=2, workers=1)
    paths = train_teachers(load_config(DIGITS, base + ["teacher.seeds=[0, 1]"]))
    schedule = capsys.readouterr().out
    cfg = load_config(DIGITS, base + [ensemble_override(paths, [3.0, 1.0]), "distill.mode=cached"])
    student = distill_student(cfg)
    # Assert: both teachers ran in parallel, differ (seeds), and are the student's weighted parents.
    assert "in parallel, 2 at a time" in schedule
    cards = [load_card(p) for p in paths]
    assert [c["training"]["seed"] for c in cards] == [0, 1]
    assert cards[0]["weights_sha256"] != cards[1]["weights_sha256"]
    card = load_card(student)
    assert [(p["path"], p["sha256"], p["weight"], p["normalized_weight"]) for p in card["parents"]] == [
        (str(paths[0]), cards[0]["weights_sha256"], 3.0, 0.75), (str(paths[1]), cards[1]["weights_sha256"], 1.0, 0.25)]
    assert card["distillation"]["mode"] == "cached" and card["metrics"]["test_accuracy"] > 0.3
