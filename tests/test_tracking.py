"""MLflow tracking (no Ray): stage runs, sweep children, the registered champion, a broken store and
tracking turned off, each read back through MLflow's own client; then the real CLI once."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raydistill.core.artifacts import CARD_FILE, WEIGHTS_FILE, load_card, mark_chosen, resolve_artifact
from raydistill.core.config import load_config
from raydistill.tracking import Tracker, local_store_uri
from raydistill.tracking.records import card_metrics, config_params, flatten

from conftest import REPO

DIGITS = str(REPO / "configs" / "digits.yaml")
EPOCH_KEYS = ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_time_s")


def trained_artifact(storage: Path, *, kind: str = "student", epochs: int = 3, parents=(), **extra) -> Path:
    """A real artifact with a per-epoch history, trained in-process on digits by the shared epoch loop
    (what a Ray Train worker runs) and written as ``training.driver.finish_artifact`` writes it."""
    from raydistill.core.artifacts import new_artifact_path, save_artifact
    from raydistill.core.cards import build_card
    from raydistill.core.config import DataSection
    from raydistill.core.data import load_data
    from raydistill.core.engine import evaluate, iterate_batches
    from raydistill.core.loop import StageSpec, build_for_spec, run_epochs

    bundle = load_data(DataSection(), 0)
    spec = StageSpec(stage=kind, model_name="mlp", model_args={"hidden": [16]}, input_shape=bundle.input_shape,
                     num_classes=bundle.num_classes, epochs=epochs, lr=1e-2, batch_size=64)
    state = run_epochs(spec, train_batches=lambda e: iterate_batches([bundle.x_train, bundle.y_train], 64,
                                                                     shuffle=True, seed=e),
                       val_batches=lambda: iterate_batches([bundle.x_val, bundle.y_val], 256, shuffle=False),
                       report=lambda metrics, s: None)
    model = build_for_spec(spec)
    model.load_state_dict(state.model)
    test = evaluate(model, bundle.x_test, bundle.y_test)
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "val_accuracy": state.history[-1]["val_accuracy"], "epochs": epochs, "history": state.history}
    card = build_card(kind=kind, model_name="mlp", model_args=spec.model_args, bundle=bundle, seed=0,
                      metrics=metrics, parents=list(parents), **extra)
    return save_artifact(new_artifact_path(storage, kind), model, card)


def config(storage: Path, *sets: str):
    return load_config(DIGITS, [f"run.storage_path={storage}", *sets])


def client_for(storage: Path):
    from mlflow.tracking import MlflowClient

    uri = local_store_uri(storage)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs_of(client, name: str = "digits", filter_string: str = "") -> list:
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r} in the store"
    return client.search_runs([experiment.experiment_id], filter_string=filter_string)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def curve(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def teacher_and_student(tmp_path_factory) -> tuple[Path, Path]:
    """A teacher and a student whose card names it as parent and a sweep trial as its origin."""
    from raydistill.core.cards import parent_entry

    storage = tmp_path_factory.mktemp("made")
    teacher = trained_artifact(storage, kind="teacher", epochs=2)
    tune = {"sweep": "/runs/tune/digits-x", "trial_id": "d2b1c_00003"}
    student = trained_artifact(storage, parents=[parent_entry(teacher, load_card(teacher))], tune=tune)
    return teacher, student


def test_a_stage_run_logs_its_config_each_epoch_the_test_metrics_and_the_sha256(tmp_path, teacher_and_student, capsys):
    # Prepare
    teacher, student = teacher_and_student
    cfg = config(tmp_path, "distill.temperature=3", "teacher.epochs=7")
    card = json.loads((student / CARD_FILE).read_text())
    # Execute
    with Tracker.from_config(cfg).stage(cfg, "distill") as run:
        run.log_artifact(student)
    # Assert: one finished run, read back through MLflow's client
    client = client_for(tmp_path)
    (found,) = runs_of(client)
    params, tags, rid = found.data.params, found.data.tags, found.info.run_id
    assert found.info.status == "FINISHED" and found.info.run_name == "distill"
    assert params["distill.temperature"] == "3.0" and params["distill.student.args.hidden"] == "[32]"
    assert "teacher.epochs" not in params  # distill does not read the teacher section
    for key in EPOCH_KEYS:
        assert curve(client, rid, key) == [(h["epoch"], pytest.approx(h[key])) for h in card["metrics"]["history"]]
    assert [s for s, _ in curve(client, rid, "val_accuracy")] == [1, 2, 3]
    assert found.data.metrics["test_accuracy"] == pytest.approx(card["metrics"]["test_accuracy"])
    assert found.data.metrics["test_loss"] == pytest.approx(card["metrics"]["test_loss"])
    assert tags["weights_sha256"] == sha256_of(student / WEIGHTS_FILE)
    assert tags["parents_sha256"] == sha256_of(teacher / WEIGHTS_FILE)
    assert tags["artifact_path"] == str(student.resolve())
    import mlflow.artifacts

    logged = Path(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=f"card/{CARD_FILE}",
                                                      dst_path=str(tmp_path / "dl"), tracking_uri=local_store_uri(tmp_path)))
    assert json.loads(logged.read_text()) == card
    assert f"tracking: mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db" in capsys.readouterr().out
    assert (tmp_path / "mlartifacts").is_dir()  # run files beside the store, not ./mlruns


SWEEP_ROWS = [
    {"trial_id": "t_00000", "status": "TERMINATED", "temperature": 2.0, "alpha": 0.25, "lr": 3e-3,
     "early_stopped": False, "chosen": True, "error": ""},
    {"trial_id": "t_00001", "status": "TERMINATED", "temperature": 8.0, "alpha": 0.75, "lr": 1e-3,
     "early_stopped": True, "chosen": False, "error": ""},
    {"trial_id": "t_00002", "status": "ERROR", "temperature": 4.0, "alpha": 0.5, "lr": 1e-3,
     "early_stopped": False, "chosen": False, "error": "RuntimeError: injected"}]


def test_a_sweep_is_a_parent_run_with_one_child_per_trial_and_its_chosen_student_is_the_champion(
        tmp_path, teacher_and_student):
    # Prepare: a finished sweep as tuning.sweep.finish_sweep returns it (Tune's own columns in the tables too)
    from raydistill.tuning.sweep import SweepResult

    _, student = teacher_and_student
    cfg = config(tmp_path)
    histories = {"t_00000": pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.5, 0.7, 0.8],
                                          "val_loss": [1.2, 0.8, 0.6], "train_loss": [1.5, 0.9, 0.7],
                                          "timestamp": [1.7e9, 1.7e9 + 1, 1.7e9 + 2], "training_iteration": [1, 2, 3]}),
                 "t_00001": pd.DataFrame({"epoch": [1], "val_accuracy": [0.4], "val_loss": [1.4], "train_loss": [1.6]})}
    result = SweepResult(tmp_path / "tune" / "digits-x", SWEEP_ROWS, best=SWEEP_ROWS[0], artifact=student,
                         histories=histories)
    # Execute
    with Tracker.from_config(cfg).stage(cfg, "tune") as run:
        run.log_sweep(result)
    # Assert: the parent holds the sweep's config and the chosen student; one child per trial
    client = client_for(tmp_path)
    (parent,) = runs_of(client, filter_string="tags.`raydistill.stage` = 'tune'")
    assert parent.info.status == "FINISHED" and parent.data.params["tune.num_samples"] == str(cfg.tune.num_samples)
    assert parent.data.tags["weights_sha256"] == sha256_of(student / WEIGHTS_FILE)
    children = {r.info.run_name: r for r in runs_of(client, filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert sorted(children) == ["t_00000", "t_00001", "t_00002"]
    for row in SWEEP_ROWS:
        child = children[row["trial_id"]]
        assert {k: float(child.data.params[k]) for k in ("temperature", "alpha", "lr")} == \
            {k: row[k] for k in ("temperature", "alpha", "lr")}
    best = children["t_00000"]
    assert curve(client, best.info.run_id, "val_accuracy") == [(1, 0.5), (2, 0.7), (3, 0.8)]
    assert curve(client, best.info.run_id, "train_loss") == [(1, 1.5), (2, 0.9), (3, 0.7)]
    assert "timestamp" not in best.data.metrics and "training_iteration" not in best.data.metrics
    assert best.data.tags["chosen"] == "true" and children["t_00001"].data.tags["early_stopped"] == "true"
    assert children["t_00002"].info.status == "FAILED" and children["t_00002"].data.tags["error"] == "RuntimeError: injected"
    assert children["t_00002"].data.metrics == {}
    champion = client.get_model_version_by_alias("digits-student", "champion")
    assert champion.run_id == parent.info.run_id and champion.tags["trial"] == "d2b1c_00003"


def test_an_interrupted_sweep_is_a_killed_run_whose_unfinished_trials_are_killed_too(tmp_path):
    from raydistill.tuning.sweep import SweepResult

    cfg = config(tmp_path)
    rows = [{**SWEEP_ROWS[0], "status": "RUNNING", "chosen": False}, SWEEP_ROWS[1]]
    with Tracker.from_config(cfg).stage(cfg, "tune") as run:
        run.log_sweep(SweepResult(tmp_path / "sweep", rows, interrupted=True))
    client = client_for(tmp_path)
    statuses = {r.info.run_name: r.info.status for r in runs_of(client)}
    assert statuses == {"tune": "KILLED", "t_00000": "KILLED", "t_00001": "FINISHED"}
    assert client.search_registered_models() == []


def test_a_federated_artifact_logs_the_global_model_per_round(tmp_path):
    # Prepare: a federated card as federated.report writes it (round 0 = the initial model; round 3 failed)
    from raydistill.core.artifacts import new_artifact_path, save_artifact
    from raydistill.core.models import build_model

    history = [{"round": r, "test_accuracy": acc, "test_loss": loss, "participating": n, "status": status, "details": {}}
               for r, acc, loss, n, status in [(0, 0.1, 2.3, 0, "ok"), (1, 0.55, 1.4, 10, "ok"),
                                               (2, 0.7, 0.9, 9, "ok"), (3, None, None, 0, "failed")]]
    card = {"kind": "federated", "name": "digits-federated-mlp", "architecture": {"name": "mlp", "args": {"hidden": [4]}},
            "input_shape": [1, 8, 8], "class_names": [str(i) for i in range(10)], "parents": [],
            "metrics": {"test_accuracy": 0.7, "test_loss": 0.9, "central_test_accuracy": 0.95, "history": history}}
    path = save_artifact(new_artifact_path(tmp_path, "federated"), build_model("mlp", (1, 8, 8), 10, {"hidden": [4]}), card)
    cfg = config(tmp_path, "federated.rounds=3")
    # Execute
    with Tracker.from_config(cfg).stage(cfg, "federated") as run:
        run.log_artifact(path)
    # Assert
    client = client_for(tmp_path)
    (found,) = runs_of(client)
    assert found.data.params["federated.rounds"] == "3" and "distill.alpha" not in found.data.params
    assert curve(client, found.info.run_id, "test_accuracy") == [(0, 0.1), (1, 0.55), (2, 0.7)]
    assert curve(client, found.info.run_id, "participating") == [(0, 0.0), (1, 10.0), (2, 9.0), (3, 0.0)]
    assert found.data.metrics["final_test_accuracy"] == 0.7 and found.data.metrics["central_test_accuracy"] == 0.95


def test_the_chosen_student_is_the_champion_version_with_its_lineage_and_the_alias_follows_chosen(
        tmp_path, teacher_and_student):
    # Prepare: the student marked chosen, as distill/tune/pipeline do
    teacher, student = teacher_and_student
    cfg = config(tmp_path)
    mark_chosen(student, tmp_path)
    tracker = Tracker.from_config(cfg)
    # Execute
    with tracker.stage(cfg, "distill") as run:
        run.log_artifact(student)
        first = run.register_champion(resolve_artifact("chosen", tmp_path))
    # Assert: the version behind @champion carries the sha256 of what CHOSEN points at
    client = client_for(tmp_path)
    chosen = Path(json.loads((tmp_path / "artifacts" / "CHOSEN").read_text())["path"])
    champion = client.get_model_version_by_alias("digits-student", "champion")
    assert str(champion.version) == first == "1"
    assert champion.tags["weights_sha256"] == json.loads((chosen / CARD_FILE).read_text())["weights_sha256"]
    assert champion.tags["teacher_sha256"] == sha256_of(teacher / WEIGHTS_FILE)
    assert (champion.tags["sweep"], champion.tags["trial"]) == ("/runs/tune/digits-x", "d2b1c_00003")
    assert champion.run_id == runs_of(client)[0].info.run_id
    import mlflow.artifacts

    files = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.source, dst_path=str(tmp_path / "dl")))
    assert sorted(p.name for p in files.iterdir()) == sorted([WEIGHTS_FILE, CARD_FILE])
    assert sha256_of(files / WEIGHTS_FILE) == champion.tags["weights_sha256"]
    # Execute again: a new chosen student takes the alias; the old version stays
    newer = trained_artifact(tmp_path, epochs=1)
    mark_chosen(newer, tmp_path)
    with tracker.stage(cfg, "distill") as run:
        run.register_champion(resolve_artifact("chosen", tmp_path), trial="manual")
    champion = client.get_model_version_by_alias("digits-student", "champion")
    assert str(champion.version) == "2" and champion.tags["weights_sha256"] == sha256_of(newer / WEIGHTS_FILE)
    assert champion.tags["trial"] == "manual" and "sweep" not in champion.tags
    assert client.get_model_version("digits-student", "1").tags["weights_sha256"] == sha256_of(student / WEIGHTS_FILE)


def test_an_unwritable_store_is_one_warning_and_the_stage_goes_on(tmp_path, teacher_and_student, capsys):
    # Prepare: the store's directory is a file, which no user (root included) can create a database in
    _, student = teacher_and_student
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be\n")
    uri = f"sqlite:///{blocker}/mlflow.db"
    cfg = config(tmp_path, f"run.tracking_uri={uri}")
    finished = False
    # Execute: everything a stage does with its tracker
    with Tracker.from_config(cfg).stage(cfg, "distill") as run:
        run.log_artifact(student)
        version = run.register_champion(student)
        finished = True
    # Assert
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("tracking:")]
    assert finished and version is None
    assert len(warnings) == 1 and uri in warnings[0] and "goes on" in warnings[0]
    assert "mlflow ui" not in captured.out
    assert blocker.read_text().startswith("a file")


def test_an_error_in_the_stage_still_raises_and_marks_the_run_failed(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(ValueError, match="diverged"):
        with Tracker.from_config(cfg).stage(cfg, "teacher"):
            raise ValueError("training diverged")
    (found,) = runs_of(client_for(tmp_path))
    assert found.info.status == "FAILED" and found.data.tags["error"] == "ValueError: training diverged"


def test_tracking_false_creates_no_store(tmp_path, teacher_and_student, capsys):
    _, student = teacher_and_student
    cfg = config(tmp_path, "run.tracking=false")
    with Tracker.from_config(cfg).stage(cfg, "distill") as run:
        run.log_artifact(student)
        assert run.register_champion(student) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert "tracking:" not in capsys.readouterr().out


def test_records_flatten_the_config_and_keep_a_round_series_apart_from_the_final_value():
    # Prepare: a federated card's metrics (round 0 = the initial model; a failed round's NaN became null)
    cfg = load_config(DIGITS)
    history = [{"round": 0, "test_accuracy": 0.1, "status": "ok", "details": {}},
               {"round": 1, "test_accuracy": 0.6, "participating": 10, "status": "ok"},
               {"round": 2, "test_accuracy": None, "participating": 0, "status": "failed"}]
    card = {"metrics": {"test_accuracy": 0.6, "central_test_accuracy": 0.9, "val_accuracy": None, "history": history}}
    # Execute
    metrics = card_metrics(card)
    teacher_params = config_params(cfg, "teacher")
    # Assert
    assert sorted(m for m in metrics if m[0] == "test_accuracy") == [("test_accuracy", 0.1, 0), ("test_accuracy", 0.6, 1)]
    assert ("final_test_accuracy", 0.6, 0) in metrics and ("central_test_accuracy", 0.9, 0) in metrics
    assert ("participating", 0.0, 2) in metrics and not any(m[0] in ("val_accuracy", "status", "details") for m in metrics)
    assert {k.split(".")[0] for k in teacher_params} == {"run", "data", "teacher"}
    assert teacher_params["teacher.model.args.hidden"] == "[1200, 1200]" and teacher_params["run.tracking"] == "true"
    assert flatten({"a": {"b": [], "c": {}}, "d": None}) == {"a.b": "[]", "a.c": "{}", "d": "null"}
    assert not any(math.isnan(v) for _, v, _ in metrics)


def test_the_pipeline_is_a_parent_run_over_its_stages_and_its_distilled_student_is_the_champion(
        tmp_path, monkeypatch, capsys):
    # Prepare: the pipeline's own code with Ray's parts stood in for by in-process training of real artifacts
    import types

    import raydistill.cli.pipeline as pipeline
    from raydistill.core.cards import parent_entry
    from raydistill.core.data import load_data

    made: dict[str, Path] = {}
    training = {"workers": 1, "threads_per_worker": 1}

    def train_teacher(cfg, bundle=None):
        made["teacher"] = trained_artifact(cfg.storage_dir(), kind="teacher", epochs=2)
        return made["teacher"]

    def distill_student(cfg, baseline=False, bundle=None):
        kind = "baseline" if baseline else "student"
        parents = [] if baseline else [parent_entry(made["teacher"], load_card(made["teacher"]))]
        made[kind] = trained_artifact(cfg.storage_dir(), kind=kind, epochs=2, parents=parents, training=training)
        return made[kind]

    monkeypatch.setitem(sys.modules, "raydistill.training.driver",
                        types.SimpleNamespace(train_teacher=train_teacher, distill_student=distill_student))
    monkeypatch.setattr(pipeline, "start", lambda cfg, stage: load_data(cfg.data, cfg.run.seed))
    cfg = config(tmp_path, "pipeline.tune=false", "pipeline.serve=false")
    # Execute
    pipeline.run_pipeline(cfg)
    # Assert: one parent (the whole config), a child per stage, the chosen student @champion
    client = client_for(tmp_path)
    runs = {r.info.run_name: r for r in runs_of(client)}
    assert sorted(runs) == ["baseline", "distill", "pipeline", "teacher"]
    top = runs["pipeline"].info.run_id
    assert "mlflow.parentRunId" not in runs["pipeline"].data.tags
    assert {runs[n].data.tags["mlflow.parentRunId"] for n in ("teacher", "distill", "baseline")} == {top}
    assert runs["pipeline"].data.params["serve.port"] == "8000" and "serve.port" not in runs["distill"].data.params
    for name, kind in (("teacher", "teacher"), ("distill", "student"), ("baseline", "baseline")):
        assert runs[name].data.tags["weights_sha256"] == sha256_of(made[kind] / WEIGHTS_FILE)
    champion = client.get_model_version_by_alias("digits-student", "champion")
    assert champion.tags["weights_sha256"] == load_card(resolve_artifact("chosen", tmp_path))["weights_sha256"]
    assert champion.run_id == runs["distill"].info.run_id
    assert champion.tags["teacher_sha256"] == sha256_of(made["teacher"] / WEIGHTS_FILE)
    assert capsys.readouterr().out.count("tracking: mlflow ui") == 1  # once, when the outermost run ends


def _cli(storage: Path, *sets: str) -> subprocess.CompletedProcess:
    """The real console entry point: the student alone for 2 epochs, trained in this process (no Ray)."""
    cmd = [sys.executable, "-m", "raydistill.cli.commands", "baseline", "--config", DIGITS,
           "--set", f"run.storage_path={storage}", "--set", "distill.epochs=2"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_baseline_command_tracks_its_run_and_says_how_to_open_it(tmp_path):
    # Execute
    proc = _cli(tmp_path)
    # Assert: the run in the store matches the artifact the command wrote
    assert proc.returncode == 0, proc.stderr[-3000:]
    (artifact,) = sorted((tmp_path / "artifacts" / "baseline").iterdir())
    card = json.loads((artifact / CARD_FILE).read_text())
    client = client_for(tmp_path)
    (found,) = runs_of(client)
    assert found.info.run_name == "baseline" and found.info.status == "FINISHED"
    assert found.data.params["distill.epochs"] == "2" and found.data.params["run.name"] == "digits"
    assert [s for s, _ in curve(client, found.info.run_id, "val_accuracy")] == [1, 2]
    assert curve(client, found.info.run_id, "train_loss") == \
        [(h["epoch"], pytest.approx(h["train_loss"])) for h in card["metrics"]["history"]]
    assert found.data.tags["weights_sha256"] == card["weights_sha256"] == sha256_of(artifact / WEIGHTS_FILE)
    assert found.data.metrics["test_accuracy"] == pytest.approx(card["metrics"]["test_accuracy"])
    assert f"tracking: mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db" in proc.stdout


def test_the_baseline_command_trains_on_when_the_tracking_store_is_unwritable(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    proc = _cli(tmp_path / "runs", f"run.tracking_uri=sqlite:///{blocker}/mlflow.db")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "runs" / "artifacts" / "baseline").iterdir())) == 1
    assert "baseline artifact:" in proc.stdout and "mlflow ui" not in proc.stdout
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("tracking:")]
    assert len(warnings) == 1 and f"sqlite:///{blocker}/mlflow.db" in warnings[0]
