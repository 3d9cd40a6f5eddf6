"""Federated clients on a real local Ray runtime: strategies, faults, min_clients, 1,000 clients."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from raydistill.core.artifacts import load_artifact
from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.engine import evaluate

DIGITS = "configs/digits.yaml"
FASHION = "configs/federated_fashion.yaml"
pytestmark = pytest.mark.ray


def _rows(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "rounds.csv") as fh:
        return list(csv.DictReader(fh))


def _cfg(storage: Path, *overrides: str):
    return load_config(DIGITS, [f"run.storage_path={storage}", "run.quiet=true", "federated.clients=6",
                                "federated.fraction=1.0", *overrides])


@pytest.fixture(scope="module")
def pool(ray_session):
    """Two client actors shared by this module's library-level runs (each start costs ~5 s)."""
    from raydistill.federated.actors import ActorPool

    shared = ActorPool(2, actor_memory_gb=1.0)
    shared.wait_ready()
    yield shared
    shared.shutdown()


@pytest.mark.timeout(120)
def test_cli_fedavg_on_digits_improves_and_writes_rounds_plot_and_artifact(ray_session, storage, capsys):
    from raydistill.cli.commands import main

    # Prepare / Execute: the README command, on a small federation
    code = main(["federated", "--config", DIGITS, "--set", f"run.storage_path={storage}", "--set", "run.quiet=true",
                 "--set", "federated.rounds=5", "--set", "federated.clients=8"])
    out = capsys.readouterr().out
    # Assert
    assert code == 0, out
    run_dir = Path(out.split("run dir: ")[1].split()[0])
    rows = _rows(run_dir)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert all(int(r["participating"]) == 8 and int(r["dropped"]) == 0 for r in rows[1:])
    assert all(int(r["bytes_sent"]) > 0 and int(r["bytes_received"]) == int(r["bytes_sent"]) for r in rows[1:])
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"]) + 0.3
    assert (run_dir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    artifact = Path(json.loads((run_dir / "artifact.json").read_text())["path"])
    model, card = load_artifact(artifact)
    assert card["kind"] == "federated" and card["federated"]["strategy"] == "fedavg"
    assert card["federated"]["clients"] == 8 and card["federated"]["rounds"] == 5
    assert card["federated"]["partition"]["kind"] == "dirichlet" and card["federated"]["partition"]["examples"] > 1000
    assert len(card["metrics"]["history"]) == 6 and card["metrics"]["central_test_accuracy"] > 0.5
    # one broadcast per round: each actor pulled the round's weights once, not once per client
    fetches = [h["details"]["weight_fetches"] for h in card["metrics"]["history"][1:]]
    assert all(1 <= f <= card["federated"]["actors"] < 8 for f in fetches), fetches
    bundle = load_data(load_config(DIGITS).data, 0)
    assert evaluate(model, bundle.x_test, bundle.y_test)["accuracy"] == pytest.approx(float(rows[-1]["test_accuracy"]), abs=1e-6)


@pytest.mark.timeout(90)
def test_fedprox_with_client_teacher_and_feddf_improve_over_round_zero(pool, storage, local_teacher):
    from raydistill.federated import run_federated

    prox = run_federated(_cfg(storage, "federated.strategy=fedprox", "federated.rounds=4",
                              f"federated.client_teacher={local_teacher}"), pool=pool)
    df = run_federated(_cfg(storage, "federated.strategy=feddf", "federated.rounds=4", "federated.distill_epochs=3",
                            "federated.method=dist", "distill.dist_beta=2"), pool=pool)
    for result in (prox, df):
        accs = [r.test_accuracy for r in result.records]
        assert accs[-1] > accs[0] + 0.2, accs
    _, prox_card = load_artifact(prox.artifact)
    assert prox_card["federated"]["mu"] == 0.01 and prox_card["parents"][0]["role"] == "client_teacher"
    _, df_card = load_artifact(df.artifact)
    assert df_card["federated"]["feddf"]["proxy_examples"] > 100
    assert {k: df_card["federated"]["feddf"][k] for k in ("method", "dist_beta", "dist_gamma")} == {
        "method": "dist", "dist_beta": 2.0, "dist_gamma": 1.0}
    assert len(df.records[-1].details["distill"]["val_accuracy"]) == 4  # before + 3 epochs


@pytest.mark.timeout(90)
def test_clients_on_actors_train_on_augmented_and_mixed_batches(pool, storage):
    from raydistill.federated import run_federated

    augment = {"translate": 1, "hflip": False, "cutout": 0, "mixup": 0.5, "mixup_alpha": 1.0}
    plain = run_federated(_cfg(storage, "federated.rounds=2"), pool=pool)
    mixed = run_federated(_cfg(storage, "federated.rounds=2", f"federated.augment={json.dumps(augment)}"), pool=pool)
    # an actor whose spec lost the class count cannot mix labels: it raises, and its client drops out
    assert [r.participating for r in mixed.records[1:]] == [6, 6] and mixed.records[-1].status == "ok"
    (plain_model, _), (mixed_model, card) = load_artifact(plain.artifact), load_artifact(mixed.artifact)
    assert card["federated"]["augment"] == augment
    pairs = zip(plain_model.state_dict().values(), mixed_model.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in pairs)  # the same seeds without augmentation train otherwise


@pytest.mark.timeout(90)
def test_raise_crash_and_straggler_are_dropped_and_the_actor_replaced(pool, storage):
    import ray

    from raydistill.federated import run_federated
    from raydistill.federated.client import FaultPlan

    # Prepare: round 1 — client 1 raises, client 2 kills its actor; round 2 — client 3 hangs
    faults = FaultPlan(raise_in=frozenset({(1, 1)}), crash_in=frozenset({(1, 2)}), slow_in=frozenset({(2, 3)}))
    pids_before = set(ray.get([s.actor.ready.remote() for s in pool.slots]))
    # Execute
    result = run_federated(_cfg(storage, "federated.rounds=3", "federated.round_timeout_s=8"), faults=faults,
                           pool=pool)
    # Assert: every round completed with the rest, drops counted by kind
    one, two, three = result.records[1:]
    assert [r.status for r in result.records] == ["ok"] * 4
    assert one.details["failed_ids"] == [1] and 2 in one.details["crashed_ids"]
    assert one.participating + one.dropped == 6 and one.actors_replaced >= 1
    assert 3 in two.details["late_ids"] and two.late >= 1 and two.actors_replaced >= 1
    assert two.participating + two.dropped == 6 and two.participating >= 3
    assert three.participating == 6 and three.dropped == 0
    rows = _rows(result.run_dir)
    assert [int(r["dropped"]) for r in rows] == [0, one.dropped, two.dropped, 0]
    pids_after = set(ray.get([s.actor.ready.remote() for s in pool.slots], timeout=60))
    assert len(pids_after) == 2 and pids_after != pids_before  # same pool size, fresh processes


@pytest.mark.timeout(60)
def test_too_few_clients_fails_the_round_and_keeps_the_last_good_model(pool, storage):
    from raydistill.federated import run_federated
    from raydistill.federated.client import FaultPlan
    from raydistill.federated.server import FederatedRunError

    faults = FaultPlan(raise_in=frozenset({(2, 0), (2, 4)}))
    with pytest.raises(FederatedRunError, match="round 2: only 4 of 6 .*min_clients=5") as info:
        run_federated(_cfg(storage, "federated.rounds=3", "federated.min_clients=5"), faults=faults, pool=pool)
    rows = _rows(info.value.run_dir)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    model, card = load_artifact(info.value.artifact)
    assert card["federated"]["status"].startswith("failed at round 2")
    assert card["metrics"]["rounds_completed"] == 1
    bundle = load_data(load_config(DIGITS).data, 0)
    assert evaluate(model, bundle.x_test, bundle.y_test)["accuracy"] == pytest.approx(float(rows[1]["test_accuracy"]), abs=1e-6)


@pytest.mark.timeout(150)
def test_thousand_clients_on_fashion_mnist_fit_in_memory(pool, storage, fashion_root):
    from raydistill.federated import run_federated
    from raydistill.federated.plan import prepare_federated

    cfg = load_config(FASHION, [f"run.storage_path={storage}", "run.quiet=true", f"data.root={fashion_root}",
                                "federated.rounds=2"])
    plan = prepare_federated(cfg)
    assert len(plan.partitions) == 1000 and cfg.data.train_limit == 0
    assert sum(len(p) for p in plan.partitions) == len(plan.bundle.y_train) == 54000
    result = run_federated(cfg, pool=pool)
    rows = _rows(result.run_dir)
    assert [int(r["participating"]) for r in rows[1:]] == [100, 100]
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"]) + 0.2
    assert result.peak_memory["pss"] < 8 * 1024**3, result.peak_memory
    # round speed is a benchmark's business (benchmarks/federated_scale.py), not a pass/fail here


@pytest.mark.timeout(300)
def test_a_federated_run_whose_driver_was_killed_goes_on_from_its_last_round_with_resume(storage, tmp_path):
    # Prepare: the CLI in its own process with its own local Ray; SIGKILL from outside once a few rounds
    # are checkpointed (no handler runs; the Ray processes it started share its fate).
    import os
    import signal
    import subprocess
    import sys
    import time

    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rd-", dir="/tmp")  # Ray's socket paths must stay < 108 bytes
    rounds = 14
    first = subprocess.Popen([sys.executable, "-m", "raydistill.cli.commands", "federated", "--config", DIGITS,
                              "--set", f"run.storage_path={storage}", "--set", f"federated.rounds={rounds}",
                              "--set", "federated.clients=6", "--set", "federated.fraction=1.0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)

    def checkpointed_round() -> int:
        found = list(storage.glob("federated/*/checkpoint/records.json"))
        return json.loads(found[0].read_text())[-1]["round"] if found else -1

    deadline = time.monotonic() + 240  # a hard cap; the wait ends on the event
    while checkpointed_round() < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read().decode()[-2000:]  # still running: killed mid-run
    os.killpg(first.pid, signal.SIGKILL)  # the driver and whatever of its session still runs
    first.wait(timeout=60)
    killed_at = checkpointed_round()
    assert 3 <= killed_at < rounds, first.stderr.read().decode()[-2000:]
    (run_dir,) = storage.glob("federated/*")
    assert not (run_dir / "summary.json").exists()
    before = {int(r["round"]): r for r in _rows(run_dir) if int(r["round"]) <= killed_at}
    # Execute: --resume with only the run dir (the run's saved config is used)
    resumed = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "federated", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=240, env=env, start_new_session=True)
    # Assert: every round exactly once, the finished ones untouched, a whole artifact, the resume recorded
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = _rows(run_dir)
    assert [int(r["round"]) for r in rows] == list(range(rounds + 1))
    assert all(rows[k] == before[k] for k in before)  # rounds up to the checkpoint were not run again
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_after_round"] == killed_at
    model, card = load_artifact(Path(summary["artifact"]))
    assert [h["round"] for h in card["metrics"]["history"]] == list(range(rounds + 1))
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"]) + 0.3
