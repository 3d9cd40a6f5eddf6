"""Federated learning without Ray: partitions, aggregation math, strategies, config checks."""
from __future__ import annotations

import math
from dataclasses import replace

import sys

import numpy as np
import pytest
import torch

from raydistill.core.config import ConfigError, load_config
from raydistill.core.config.schema import AugmentSpec
from raydistill.core.data import normalize
from raydistill.core.engine import KDSettings, evaluate
from raydistill.federated.plan import pool_size
from raydistill.federated.aggregate import (distill_ensemble, ensemble_logits, fedavg, proximal_pull, proximal_term,
                                            to_numpy_state, to_torch_state)
from raydistill.federated.client import FaultPlan, LocalSpec, train_client
from raydistill.federated.memory import tree_memory
from raydistill.federated.partition import (PartitionError, dirichlet_partition, iid_partition, label_histogram,
                                            label_skew, partition_summary)
from raydistill.federated.plan import prepare_federated
from raydistill.federated.server import central_reference
from raydistill.federated.rounds import InProcessExecutor, run_rounds
from raydistill.federated.strategies import STRATEGIES, TooFewClientsError, make_strategy
from raydistill.core.models import build_model

DIGITS = "configs/digits.yaml"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread avoids spin-waiting on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _labels(n_per_class: int = 60, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(3).permutation(np.repeat(np.arange(classes), n_per_class))


def _assert_disjoint_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n
    assert joined.min() == 0 and joined.max() == n - 1


# --- partitions ---------------------------------------------------------------------------


def test_iid_partition_is_disjoint_covering_balanced_and_reproducible():
    parts = iid_partition(1003, 10, seed=1)
    _assert_disjoint_cover(parts, 1003)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = iid_partition(1003, 10, seed=1)
    other = iid_partition(1003, 10, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_partition_is_disjoint_covering_reproducible_with_min_size(alpha):
    labels = _labels()
    parts = dirichlet_partition(labels, 8, alpha=alpha, seed=5, min_size=5)
    _assert_disjoint_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 5
    again = dirichlet_partition(labels, 8, alpha=alpha, seed=5, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = _labels(200)
    skew = {a: np.mean([label_skew(label_histogram(dirichlet_partition(labels, 10, alpha=a, seed=s, min_size=2),
                                                   labels, 10)) for s in range(3)])
            for a in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.5 and skew[100.0] < 0.1


def test_histogram_rows_count_each_clients_labels_and_summary_prints_them():
    labels = _labels(30, 3)
    parts = dirichlet_partition(labels, 4, alpha=0.5, seed=0, min_size=2)
    hist = label_histogram(parts, labels, 3)
    assert hist.shape == (4, 3)
    assert [int(h) for h in hist.sum(axis=1)] == [len(p) for p in parts]
    assert np.array_equal(hist.sum(axis=0), np.bincount(labels))
    text = partition_summary(parts, labels, ["a", "b", "c"])
    assert "4 clients, 90 examples" in text and "label skew" in text
    assert " ".join(str(v) for v in hist[0]) in " ".join(text.splitlines()[2].split()[1:])


def test_impossible_partitions_fail_clearly():
    labels = _labels(10)  # 100 examples
    with pytest.raises(PartitionError, match="101 clients x min_partition_size 1"):
        dirichlet_partition(labels, 101, alpha=1.0, seed=0)
    with pytest.raises(PartitionError, match="in 3 tries"):
        dirichlet_partition(labels, 20, alpha=0.01, seed=0, min_size=5, max_tries=3)
    with pytest.raises(PartitionError, match="alpha must be > 0"):
        dirichlet_partition(labels, 2, alpha=0.0, seed=0)


# --- aggregation --------------------------------------------------------------------------


def test_fedavg_equals_hand_computed_weighted_mean():
    a = {"w": np.array([[1.0, 2.0]], np.float32), "steps": np.array(2, np.int64)}
    b = {"w": np.array([[3.0, -2.0]], np.float32), "steps": np.array(4, np.int64)}
    c = {"w": np.array([[0.0, 10.0]], np.float32), "steps": np.array(7, np.int64)}
    out = fedavg([(a, 1), (b, 2), (c, 5)])
    # n = 8: w = 1/8 * a + 2/8 * b + 5/8 * c
    assert np.allclose(out["w"], [[(1 * 1 + 2 * 3 + 5 * 0) / 8, (1 * 2 + 2 * -2 + 5 * 10) / 8]], atol=0, rtol=1e-7)
    assert out["w"].dtype == np.float32
    assert out["steps"] == round((2 + 8 + 35) / 8) and out["steps"].dtype == np.int64
    assert a["w"][0, 0] == 1.0  # inputs untouched
    with pytest.raises(ValueError, match="at least one"):
        fedavg([])
    with pytest.raises(ValueError, match="no examples"):
        fedavg([(a, 0)])


def test_fedavg_of_identical_models_is_that_model():
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": [16]})
    state = to_numpy_state(model.state_dict())
    out = fedavg([(state, 3), (state, 9)])
    assert all(np.allclose(out[k], state[k], rtol=1e-6) for k in state)


def test_proximal_term_value_and_gradient():
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    g = torch.tensor([0.0, 2.0, 5.0])
    term = proximal_term([w], [g], mu=0.5)
    assert float(term.detach()) == pytest.approx(0.25 * (1 + 0 + 4))  # (mu/2) * ||w - g||^2
    term.backward()
    assert torch.allclose(w.grad, 0.5 * (w.detach() - g))


def test_proximal_pull_step_equals_step_on_loss_plus_term():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    base = build_model("mlp", (1, 8, 8), 10, {"hidden": [8]})
    anchor = {k: v + 0.3 for k, v in to_numpy_state(base.state_dict()).items()}  # w_global != w
    hooked, explicit = [build_model("mlp", (1, 8, 8), 10, {"hidden": [8]}) for _ in range(2)]
    for m in (hooked, explicit):
        m.load_state_dict(base.state_dict())
    opt_h, opt_e = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (hooked, explicit))
    with proximal_pull(hooked, anchor, mu=0.7):
        torch.nn.functional.cross_entropy(hooked(x), y).backward()
    opt_h.step()
    anchors = [torch.as_tensor(anchor[n]) for n, _ in explicit.named_parameters()]
    loss = torch.nn.functional.cross_entropy(explicit(x), y) + proximal_term(list(explicit.parameters()), anchors, 0.7)
    loss.backward()
    opt_e.step()
    for (n, p), (_, q) in zip(hooked.named_parameters(), explicit.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    assert all(not p._backward_hooks for p in hooked.parameters())  # hooks removed on exit


def test_feddf_distillation_moves_the_student_toward_the_ensemble():
    torch.manual_seed(1)
    proxy = np.random.default_rng(0).normal(size=(256, 1, 8, 8)).astype(np.float32)
    model = build_model("mlp", (1, 8, 8), 4, {"hidden": [32]})
    clients = [to_numpy_state(build_model("mlp", (1, 8, 8), 4, {"hidden": [32]}).state_dict()) for _ in range(3)]
    teacher = ensemble_logits(model, clients, proxy)  # (N, C) averaged logits
    by_hand = []
    for state in clients:
        model.load_state_dict(to_torch_state(state))
        with torch.no_grad():
            by_hand.append(model(torch.as_tensor(proxy)).numpy())
    assert teacher.shape == (256, 4) and np.allclose(teacher, np.mean(by_hand, axis=0), atol=1e-5)
    start = to_numpy_state(build_model("mlp", (1, 8, 8), 4, {"hidden": [32]}).state_dict())
    model.load_state_dict(to_torch_state(start))

    def kl_to_teacher() -> float:
        with torch.no_grad():
            p_t = torch.softmax(torch.as_tensor(teacher) / 3.0, -1)
            log_s = torch.log_softmax(model(torch.as_tensor(proxy)) / 3.0, -1)
            return float(torch.nn.functional.kl_div(log_s, p_t, reduction="batchmean"))

    before = kl_to_teacher()
    kd = KDSettings(temperature=3.0, alpha=0.0)
    history = distill_ensemble(model, teacher, proxy, kd=kd, epochs=15, lr=3e-3, batch_size=64, seed=0)
    assert len(history["losses"]) == 15 and history["losses"][-1] < history["losses"][0]
    assert kl_to_teacher() < 0.5 * before
    # an empty validation split (data.val_fraction: 0; found by review: None > None after round 1) means
    # no early stopping: the same run as without one
    model.load_state_dict(to_torch_state(start))
    empty = (proxy[:0], np.zeros(0, dtype=np.int64))
    again = distill_ensemble(model, teacher, proxy, kd=kd, epochs=15, lr=3e-3, batch_size=64, seed=0, val=empty)
    assert again["losses"] == history["losses"] and again["val_accuracy"] == [] and again["kept_epoch"] == 0


# --- clients, strategies and the round loop (in-process, real digits) -------------------------


def _digits_setup(*overrides: str):
    cfg = load_config(DIGITS, ["run.quiet=true", "federated.clients=5", "federated.rounds=4", *overrides])
    plan = prepare_federated(cfg)

    def build():
        torch.manual_seed(0)
        return build_model("mlp", plan.bundle.input_shape, plan.bundle.num_classes, {"hidden": [32]})

    return cfg, plan, plan.context(build), build


def _run_in_process(*overrides: str, faults: FaultPlan | None = None, teachers=(), **rounds_kwargs):
    cfg, plan, ctx, build = _digits_setup(*overrides)
    ctx.has_teacher = bool(teachers)
    strategy = make_strategy(cfg.federated, ctx)
    evaluator = build()

    def score(state):
        evaluator.load_state_dict(to_torch_state(state))
        return evaluate(evaluator, plan.bundle.x_test, plan.bundle.y_test)

    executor = InProcessExecutor(build, plan.pool_x, plan.pool_y, faults=faults, teachers=teachers)
    return run_rounds(strategy, plan.partitions, to_numpy_state(build().state_dict()), executor, score,
                      rounds=cfg.federated.rounds, **rounds_kwargs)


def test_fedavg_in_process_improves_on_round_zero():
    out = _run_in_process()
    accs = [r.test_accuracy for r in out.records]
    assert len(out.records) == 5 and out.error is None
    assert accs[-1] > accs[0] + 0.3
    assert all(r.participating == 5 for r in out.records[1:])


def test_fedprox_with_mu_zero_equals_fedavg_and_mu_positive_differs():
    avg = _run_in_process("federated.strategy=fedavg")
    prox0 = _run_in_process("federated.strategy=fedprox", "federated.mu=0.0")
    prox = _run_in_process("federated.strategy=fedprox", "federated.mu=1.0")
    assert all(np.array_equal(avg.state[k], prox0.state[k]) for k in avg.state)
    assert not all(np.allclose(avg.state[k], prox.state[k]) for k in avg.state)


def test_feddf_changes_the_fedavg_model_and_keeps_the_best_validation_accuracy():
    avg = _run_in_process("federated.strategy=fedavg", "federated.proxy_fraction=0.2", "federated.rounds=2")
    df = _run_in_process("federated.strategy=feddf", "federated.proxy_fraction=0.2", "federated.rounds=2",
                         "federated.distill_epochs=5")
    distill = df.records[-1].details["distill"]
    assert len(distill["val_accuracy"]) == 6  # before + 5 epochs
    assert max(distill["val_accuracy"]) == distill["val_accuracy"][distill["kept_epoch"]]
    assert not all(np.allclose(avg.state[k], df.state[k]) for k in avg.state)


def test_client_kd_uses_the_teacher(local_teacher):
    from raydistill.core.artifacts import load_artifact

    teacher, _ = load_artifact(local_teacher)
    _, plan, _, build = _digits_setup()
    model = build()
    start = to_numpy_state(model.state_dict())
    x, y = plan.pool_x[plan.partitions[0]], plan.pool_y[plan.partitions[0]]
    plain = LocalSpec(epochs=2, batch_size=16, lr=0.05)
    kd = LocalSpec(epochs=2, batch_size=16, lr=0.05, kd=KDSettings(temperature=3.0, alpha=0.1))
    s_plain, _ = train_client(model, start, x, y, plain, seed=1)
    s_kd, _ = train_client(model, start, x, y, kd, seed=1, teachers=[teacher])
    s_kd_no_teacher, _ = train_client(model, start, x, y, kd, seed=1)
    assert not all(np.allclose(s_plain[k], s_kd[k]) for k in start)
    assert all(np.array_equal(s_plain[k], s_kd_no_teacher[k]) for k in start)
    # mixup with client KD: the teacher labels the mixed batch (mixed labels for the hard term)
    mixing = AugmentSpec(mixup=1.0)
    s_mix, loss_mix = train_client(model, start, x, y, replace(kd, augment=mixing, num_classes=10), seed=1,
                                   teachers=[teacher])
    s_mix_alone, _ = train_client(model, start, x, y, replace(plain, augment=mixing, num_classes=10), seed=1)
    assert math.isfinite(loss_mix) and all(np.isfinite(v).all() for v in s_mix.values())
    assert not all(np.allclose(s_mix[k], s_kd[k]) for k in start)  # mixed, not the clean batches
    assert not all(np.allclose(s_mix[k], s_mix_alone[k]) for k in start)  # and the teacher took part


def test_a_client_with_flips_steps_on_its_image_or_the_mirror_image():
    # Independent reference: one SGD step of a linear softmax model on one example, by hand in float64:
    # p = softmax(W v + b), W' = W - lr (p - e_y) v^T, b' = b - lr (p - e_y). With augment.hflip the
    # client's step is the step on the image or on the image mirrored left-right, and both happen.
    x = (torch.arange(6, dtype=torch.float32).reshape(1, 1, 2, 3) / 6).numpy()  # no left-right symmetry
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    start, lr = to_numpy_state(model.state_dict()), 0.5

    def step(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, b, v = start["1.weight"].astype(np.float64), start["1.bias"].astype(np.float64), image.reshape(-1)
        z = w @ v + b
        g = np.exp(z - z.max()) / np.exp(z - z.max()).sum() - np.eye(3)[1]
        return w - lr * np.outer(g, v), b - lr * g

    expected = {"image": step(x), "mirror": step(x[..., ::-1])}
    spec = LocalSpec(epochs=1, batch_size=1, lr=lr, augment=AugmentSpec(hflip=True))
    seen = []
    for seed in range(12):
        state, _ = train_client(model, start, x, np.array([1]), spec, seed=seed)
        seen += [name for name, (w, b) in expected.items()
                 if np.allclose(state["1.weight"], w, atol=1e-6) and np.allclose(state["1.bias"], b, atol=1e-6)]
        assert len(seen) == seed + 1, f"seed {seed}: neither the image's step nor the mirror's"
    assert set(seen) == {"image", "mirror"}


def test_federated_augment_and_mixup_reach_every_client_with_the_plans_fill_and_classes():
    # mixup needs the class count to mix labels: a client without it raises, and the round fails
    cfg, plan, ctx, _ = _digits_setup("federated.augment={translate: 1, mixup: 0.5}")
    raw_zero = normalize(np.zeros((1, 1, 1, 1)), plan.bundle.normalization)  # a blank pixel, as the data holds it
    spec = make_strategy(cfg.federated, ctx).configure_round(1)
    assert spec.fill == pytest.approx([float(raw_zero[0, 0, 0, 0])]) and spec.fill[0] < 0
    assert (spec.augment.translate, spec.augment.mixup, spec.num_classes) == (1, 0.5, 10)
    plain = _run_in_process("federated.rounds=2")
    mixed = _run_in_process("federated.rounds=2", "federated.augment={translate: 1, mixup: 0.5}")
    assert mixed.error is None and [r.participating for r in mixed.records[1:]] == [5, 5]
    assert not all(np.allclose(plain.state[k], mixed.state[k]) for k in plain.state)
    # the central reference trains as a client does: mixing raises without the class count
    plain_central = central_reference(_digits_setup()[1])
    mixed_central = central_reference(plan)
    assert mixed_central["epochs"] == plain_central["epochs"] and mixed_central["loss"] != plain_central["loss"]


def test_too_few_clients_stops_the_run_and_keeps_the_last_good_state():
    faults = FaultPlan(raise_in=frozenset({(3, 0), (3, 1)}))
    out = _run_in_process("federated.min_clients=4", faults=faults)
    assert isinstance(out.error, TooFewClientsError) and out.error.round == 3
    assert [r.status for r in out.records] == ["ok", "ok", "ok", "failed"]
    assert out.records[-1].failed == 2 and out.records[-1].participating == 3
    assert out.last_good_round == 2
    again = _run_in_process("federated.rounds=2")  # same seed: the state after round 2
    assert all(np.array_equal(out.state[k], again.state[k]) for k in out.state)


def test_bad_client_updates_are_refused_and_the_round_goes_on():
    # Round 2: client 0 sends NaN weights, client 1 a wrongly shaped tensor, client 2 claims a million
    # examples. Independent reference: the same run where clients 0 and 1 simply fail in round 2 and
    # client 2 is honest. Refusing an update must equal dropping that client; the weight n_i must be
    # the partition size the server assigned, whatever the client claims.
    bad = FaultPlan(poison_in=frozenset({(2, 0)}), misshape_in=frozenset({(2, 1)}), overclaim_in=frozenset({(2, 2)}))
    out = _run_in_process(faults=bad)
    reference = _run_in_process(faults=FaultPlan(raise_in=frozenset({(2, 0), (2, 1)})))
    assert out.error is None and [r.status for r in out.records] == ["ok"] * 5
    assert all(np.array_equal(out.state[k], reference.state[k]) for k in out.state)
    assert all(np.isfinite(v).all() for v in out.state.values())
    rejected = out.records[2].details["rejected"]
    assert set(rejected) == {"0", "1"}
    assert "NaN" in rejected["0"] and "shape" in rejected["1"]
    assert out.records[2].participating == 3 and out.records[2].dropped == 2 and out.records[2].rejected == 2
    assert "rejected" in out.records[2].row()  # a column of rounds.csv
    assert out.rejected_updates == {"2": rejected}  # the reasons, per round, as summary.json lists them


def test_failure_prob_drops_clients_deterministically():
    a = _run_in_process("federated.rounds=3", faults=FaultPlan(failure_prob=0.4, seed=0))
    b = _run_in_process("federated.rounds=3", faults=FaultPlan(failure_prob=0.4, seed=0))
    failed = [r.details["failed_ids"] for r in a.records[1:]]
    assert sum(len(f) for f in failed) > 0
    assert failed == [r.details["failed_ids"] for r in b.records[1:]]
    assert all(r.participating + r.failed == 5 for r in a.records[1:] if r.status == "ok")


# --- configuration errors, before any actor ---------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("federated.fraction=0", "federated.fraction"),
    ("federated.fraction=1.5", "federated.fraction"),
    ("federated.dirichlet_alpha=0", "federated.dirichlet_alpha"),
    ("federated.dirichlet_alpha=-1", "federated.dirichlet_alpha"),
    ("federated.strategy=fedsgd", "federated.strategy"),
    ("federated.optimizer=lbfgs", "federated.optimizer"),
])
def test_bad_values_fail_at_load(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(DIGITS, [override])


@pytest.mark.parametrize("overrides, match", [
    (["federated.clients=5000"], "federated.clients: 5000 clients"),
    (["federated.clients=700", "federated.min_partition_size=2"], "federated.clients: 700 clients"),
    (["federated.clients=200", "federated.dirichlet_alpha=0.01", "federated.min_partition_size=5"],
     "federated.dirichlet_alpha"),
    (["federated.clients=10", "federated.fraction=0.2", "federated.min_clients=3"], "federated.min_clients"),
    (["federated.model.name=nope"], "federated.model"),
])
def test_bad_federations_fail_before_ray_starts(overrides, match, tmp_path):
    from raydistill.federated import run_federated

    cfg = load_config(DIGITS, [f"run.storage_path={tmp_path}", *overrides])
    ray_was_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # the suite's session
    with pytest.raises(ConfigError, match=match):
        run_federated(cfg)
    # the error came before Ray was started (the run must not have initialized it)
    assert ("ray" in sys.modules and sys.modules["ray"].is_initialized()) == ray_was_running
    assert not (tmp_path / "federated").exists()


def test_strategy_registry_names_and_helpful_miss():
    assert STRATEGIES.names() == ["fedavg", "feddf", "fedmedian", "fedprox", "fedtrimmedavg"]
    with pytest.raises(KeyError, match="known: fedavg, feddf, fedmedian, fedprox, fedtrimmedavg"):
        STRATEGIES.get("fedsgd")


def test_pool_size_from_cpus_memory_and_request():
    gib = 1024**3
    assert pool_size(requested=0, cpus=2, memory_bytes=16 * gib, actor_memory_gb=1, clients_per_round=100) == 2
    assert pool_size(requested=0, cpus=8, memory_bytes=3.5 * gib, actor_memory_gb=1, clients_per_round=100) == 3
    assert pool_size(requested=0, cpus=8, memory_bytes=16 * gib, actor_memory_gb=1, clients_per_round=1) == 1
    assert pool_size(requested=4, cpus=2, memory_bytes=16 * gib, actor_memory_gb=1, clients_per_round=1) == 4
    with pytest.raises(ConfigError, match="federated.actors: 5 actors"):
        pool_size(requested=5, cpus=2, memory_bytes=16 * gib, actor_memory_gb=1, clients_per_round=10)
    with pytest.raises(ConfigError, match="federated.actor_memory_gb"):
        pool_size(requested=0, cpus=2, memory_bytes=0.5 * gib, actor_memory_gb=1, clients_per_round=10)


def test_tree_memory_counts_this_process():
    mem = tree_memory()
    assert mem["processes"] >= 1 and mem["rss"] > 50 * 1024**2 and 0 < mem["pss"] <= mem["rss"]


def test_median_and_trimmed_mean_match_the_written_formulas():
    from raydistill.federated.aggregate import fedmedian, fedtrimmedavg

    values = [1.0, 2.0, 100.0, -50.0, 3.0]  # one entry, five clients, two of them extreme
    updates = [({"w": np.array([[v, 2 * v]], np.float32), "n": np.array(i, np.int64)}, 10) for i, v in enumerate(values)]
    median = fedmedian(updates)
    trimmed = fedtrimmedavg(updates, 0.2)  # b = floor(0.2 * 5) = 1 cut from each end
    assert median["w"].tolist() == [[2.0, 4.0]] and median["w"].dtype == np.float32
    assert trimmed["w"].tolist() == [[(1.0 + 2.0 + 3.0) / 3, (2.0 + 4.0 + 6.0) / 3]]
    assert median["n"] == 2 and trimmed["n"] == 2 and median["n"].dtype == np.int64
    assert fedtrimmedavg(updates, 0.0)["w"][0, 0] == pytest.approx(sum(values) / 5)


def test_robust_aggregators_resist_a_sign_flipping_client_that_breaks_fedavg():
    # 10 clients, client 3 sends -100 x its weights every round (finite and well shaped: screening
    # cannot catch it). Median and trimmed mean must stay near the clean FedAvg run; FedAvg must not.
    attack = FaultPlan(flip_in=frozenset((r, 3) for r in range(1, 11)))
    sets = ("federated.clients=10", "federated.partition=iid", "federated.rounds=10")
    clean = _run_in_process(*sets).records[-1].test_accuracy
    attacked = {s: _run_in_process(*sets, f"federated.strategy={s}", faults=attack).records[-1].test_accuracy
                for s in ("fedavg", "fedmedian", "fedtrimmedavg")}
    assert attacked["fedmedian"] >= clean - 0.02 and attacked["fedtrimmedavg"] >= clean - 0.02
    assert attacked["fedavg"] < clean - 0.2


@pytest.mark.parametrize("value", ["0.5", "-0.1", ".nan"])
def test_trim_fraction_is_checked(value):
    with pytest.raises(ConfigError, match="federated.trim_fraction"):
        load_config(DIGITS, [f"federated.trim_fraction={value}"])


# --- per-round checkpoints: a run whose driver died goes on from its last finished round ---------


def test_a_run_resumed_from_its_round_checkpoint_ends_like_the_uninterrupted_run(tmp_path):
    from raydistill.federated.checkpoint import load_round, save_round

    whole = _run_in_process("federated.strategy=fedprox", "federated.mu=0.1")
    # the "dead driver": checkpoints are written after every round; keep the one of round 2
    kept = {}

    def keep(state, records):
        if records[-1].round == 2:
            save_round(tmp_path, to_numpy_state(state), records)
            kept["written"] = True

    first = _run_in_process("federated.strategy=fedprox", "federated.mu=0.1", on_state=keep)
    assert kept and [r.round for r in first.records] == [0, 1, 2, 3, 4]
    state, records = load_round(tmp_path, like=whole.state)
    assert [r.round for r in records] == [0, 1, 2]
    seen = []
    resumed = _run_in_process("federated.strategy=fedprox", "federated.mu=0.1", resume=(state, records),
                              on_round=lambda r: seen.append(r.round))
    assert seen == [3, 4]  # no finished round ran again
    assert [r.round for r in resumed.records] == [0, 1, 2, 3, 4]
    for key in whole.state:  # client sampling, seeds and aggregation depend on (seed, round) only
        np.testing.assert_array_equal(resumed.state[key], whole.state[key])
    assert resumed.records[1].wall_s == first.records[1].wall_s  # rounds 1-2 come from the checkpoint


def test_round_checkpoints_keep_nan_metrics_and_refuse_a_folder_without_one_or_with_a_broken_state(tmp_path):
    from raydistill.core.config import ConfigError
    from raydistill.federated.checkpoint import load_round, save_round
    from raydistill.federated.rounds import RoundRecord

    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
    save_round(tmp_path, state, [RoundRecord(0, test_accuracy=0.5), RoundRecord(1, status="ok")])
    loaded, records = load_round(tmp_path, like=state)
    np.testing.assert_array_equal(loaded["w"], state["w"])
    assert loaded["w"].dtype == np.float32 and math.isnan(records[1].test_accuracy)
    assert records[0].test_accuracy == 0.5
    with pytest.raises(ConfigError, match="holds no round checkpoint"):
        load_round(tmp_path / "elsewhere", like=state)
    # another model's checkpoint, or a poisoned one, is refused before a round trains on it (found by review)
    with pytest.raises(ConfigError, match=r"not this run's model: w has shape \[2, 3\], the global model has \[3, 2\]"):
        load_round(tmp_path, like={"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)})
    save_round(tmp_path, {"w": state["w"], "b": np.array([0.0, np.nan, 1.0], np.float32)}, records)
    with pytest.raises(ConfigError, match="not this run's model: b holds NaN or infinite values"):
        load_round(tmp_path, like=state)
    (tmp_path / "checkpoint" / "records.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        load_round(tmp_path, like=state)


@pytest.mark.parametrize("strategy", ["fedavg", "feddf"])
def test_a_round_whose_aggregate_overflows_keeps_the_previous_global_model(strategy):
    # Found by review: finite but enormous updates (3e37, well shaped, float32) pass the screening,
    # the aggregate answered NaN and the round was "ok" - the NaN model became the last good one.
    cfg, plan, ctx, build = _digits_setup(f"federated.strategy={strategy}")
    evaluator = build()

    def score(state):
        evaluator.load_state_dict(to_torch_state(state))
        return evaluate(evaluator, plan.bundle.x_test, plan.bundle.y_test)

    honest = InProcessExecutor(build, plan.pool_x, plan.pool_y)
    states = {}

    def hostile_in_round_2(rnd, state, tasks, spec):
        states[rnd] = {k: v.copy() for k, v in state.items()}  # the global model each round starts from
        collected = honest(rnd, state, tasks, spec)
        if rnd == 2:
            for update in collected.updates:
                update.state = {k: np.full_like(v, 3e37) for k, v in update.state.items()}
        return collected

    out = run_rounds(make_strategy(cfg.federated, ctx), plan.partitions, to_numpy_state(build().state_dict()),
                     hostile_in_round_2, score, rounds=4)

    assert [r.status for r in out.records] == ["ok", "ok", "diverged", "ok", "ok"]
    for key, value in states[3].items():  # round 3 starts from round 1's model, not the overflowed one
        np.testing.assert_array_equal(value, states[2][key])
    assert out.last_good_round == 4 and all(np.isfinite(v).all() for v in out.state.values())
    assert out.records[-1].test_accuracy > out.records[0].test_accuracy




def test_federated_method_reaches_client_kd_and_feddf_with_distills_knobs_and_no_warm_up():
    from raydistill.core.methods import Method

    cfg, _, ctx, _ = _digits_setup("federated.method=dkd+lskd", "distill.dkd_beta=2", "distill.dkd_warmup_epochs=3",
                                   "federated.strategy=feddf",
                                   "federated.distill_temperature=5", "federated.client_kd_alpha=0.25")
    ctx.has_teacher = True
    spec = make_strategy(cfg.federated, ctx).configure_round(1)
    assert spec.kd.method == Method("dkd", True) and spec.kd.dkd_beta == 2.0 and spec.kd.warmup_epochs == 0
    assert (spec.kd.temperature, spec.kd.alpha) == (5.0, 0.25)
    assert make_strategy(cfg.federated, ctx).soft_kd(0.0).alpha == 0.0  # FedDF's pure soft term
    plain_cfg, _, plain_ctx, _ = _digits_setup()
    plain_ctx.has_teacher = True
    assert make_strategy(plain_cfg.federated, plain_ctx).configure_round(1).kd.method == Method("kd", False)
    # FedDF distills with it: the same rounds with kd and with dkd+lskd end in other weights (only FedDF differs)
    feddf = ["federated.strategy=feddf", "federated.rounds=2", "federated.distill_epochs=2"]
    runs = [_run_in_process(*feddf, f"federated.method={m}") for m in ("kd", "dkd+lskd")]
    assert all(r.error is None and all(np.isfinite(v).all() for v in r.state.values()) for r in runs)
    assert not all(np.allclose(runs[0].state[k], runs[1].state[k]) for k in runs[0].state)
    assert runs[0].records[1].details["distill"]["losses"] != runs[1].records[1].details["distill"]["losses"]


def test_feddf_with_dkd_takes_the_ensembles_prediction_as_the_target_class():
    # one full batch: the first epoch's loss is DKD at the initial weights (numpy, float64), with the target
    # class argmax z_t; the proxy has no labels, and class 0 for every example would give another value
    from test_methods import _dkd_numpy
    from raydistill.core.methods import parse_method

    rng = np.random.default_rng(3)
    proxy = rng.normal(size=(12, 6)).astype(np.float32)
    z_t = rng.normal(0, 3, size=(12, 4)).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    with torch.no_grad():
        z_s = model(torch.as_tensor(proxy)).double().numpy()
    kd = KDSettings(temperature=2.0, alpha=0.7, method=parse_method("dkd"), dkd_alpha=1.0, dkd_beta=8.0)
    history = distill_ensemble(model, z_t, proxy, kd=kd, epochs=1, lr=1e-3, batch_size=64, seed=0)
    p_t = torch.softmax(torch.as_tensor(z_t, dtype=torch.float64) / 2.0, -1).numpy()
    expected = _dkd_numpy(z_s, p_t, z_t.argmax(1), 2.0, 1.0, 8.0)  # alpha 0: the soft term alone
    assert history["losses"][0] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(_dkd_numpy(z_s, p_t, np.zeros(12, dtype=int), 2.0, 1.0, 8.0), rel=1e-3)
