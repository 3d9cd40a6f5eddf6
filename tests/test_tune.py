"""``raydistill tune``: the T x alpha sweep.

Unit tests (no Ray): search-space and concurrency checks, the report helpers.
Ray tests (the shared local runtime): a 6-trial ASHA sweep with one failing trial and every
output file; an interrupted sweep resumed without rerunning finished trials.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from conftest import tiny_overrides
from raydistill.core.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits.yaml"


def tune_config(storage: Path, *extra: str, teacher: Path | None = None):
    """A fast digits sweep config: 1-worker trials, tiny teacher, few epochs."""
    overrides = tiny_overrides(storage, epochs=2, workers=1) + list(extra)
    if teacher is not None:
        overrides.append(f"distill.teacher={teacher}")
    return load_config(DIGITS, overrides)


# --- unit tests: no Ray ---------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("tune.temperature=[]", "tune.temperature"),
    ("tune.temperature=[0, 5]", "tune.temperature"),
    ("tune.temperature=[-1, 5]", "tune.temperature"),
    ("tune.temperature=[5, 5]", "tune.temperature"),  # empty log-uniform range
    ("tune.temperature=[9, 2]", "tune.temperature"),
    ("tune.alpha=[0.2, 1.5]", "tune.alpha"),
    ("tune.alpha=[-0.1, 0.5]", "tune.alpha"),
    ("tune.lr=[0.01, 0.001]", "tune.lr"),
    ("tune.grace_period=999", "tune.grace_period"),  # > tune.max_epochs
    ("tune.metric=accuracy", "tune.metric"),
    ("tune.method=[kd, crd]", "tune.method"),
    ("tune.method=[dkd, dkd]", "tune.method"),
])
def test_bad_search_space_is_a_config_error_naming_the_key(storage, override, key):
    # Prepare / Execute / Assert
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tune_config(storage, override)


def test_grid_with_a_non_positive_temperature_or_alpha_outside_unit_interval_is_rejected(storage):
    with pytest.raises(ConfigError, match=r"tune\.temperature"):
        tune_config(storage, "tune.temperature_search=grid", "tune.temperature=[2, 0]")
    with pytest.raises(ConfigError, match=r"tune\.alpha"):
        tune_config(storage, "tune.alpha_search=grid", "tune.alpha=[0.5, 1.2]")


def test_optuna_with_a_grid_is_rejected(storage):
    with pytest.raises(ConfigError, match=r"tune\.searcher"):
        tune_config(storage, "tune.searcher=optuna", "tune.temperature_search=grid", "tune.temperature=[2, 4]")


def test_a_method_axis_is_a_grid_that_multiplies_the_trials(storage):
    from raydistill.tuning.space import expected_trials, search_space

    cfg = tune_config(storage, "tune.num_samples=3", "tune.method=[kd, dkd, kd+lskd]")
    assert expected_trials(cfg) == 9
    assert search_space(cfg)["method"] == {"grid_search": ["kd", "dkd", "kd+lskd"]}
    with pytest.raises(ConfigError, match=r"tune\.searcher"):
        tune_config(storage, "tune.searcher=optuna", "tune.method=[kd, dkd]")


def test_optuna_missing_gives_an_install_hint(storage, monkeypatch):
    from raydistill.tuning.sweep import check_searcher

    cfg = tune_config(storage, "tune.searcher=optuna")
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    with pytest.raises(ConfigError, match=r"raydistill\[optuna\]"):
        check_searcher(cfg)
    check_searcher(tune_config(storage))  # the default searcher never imports optuna


def test_concurrency_cap_follows_cluster_cpus_and_rejects_the_unschedulable(storage):
    from raydistill.tuning.sweep import concurrency_cap, expected_trials

    cfg = tune_config(storage, "tune.num_samples=6")
    assert concurrency_cap(cfg, 2.0) == 2  # 1 CPU per in-process trial
    assert concurrency_cap(tune_config(storage, "tune.num_samples=1"), 8.0) == 1  # never more than trials
    assert concurrency_cap(tune_config(storage, "distill.workers=2"), 2.0) == 1  # 0.01 + 2 x 0.99 CPUs
    with pytest.raises(ConfigError, match=r"tune\.max_concurrent"):
        concurrency_cap(tune_config(storage, "tune.max_concurrent=3"), 2.0)
    with pytest.raises(ConfigError, match=r"distill\.workers"):
        concurrency_cap(tune_config(storage, "distill.workers=3"), 2.0)
    grid = tune_config(storage, "tune.temperature_search=grid", "tune.temperature=[1, 2, 4]",
                       "tune.alpha_search=grid", "tune.alpha=[0.5, 0.9]", "tune.num_samples=2")
    assert expected_trials(grid) == 12


def test_cli_rejects_a_bad_space_with_exit_code_2(capsys):
    from raydistill.cli.commands import main

    code = main(["tune", "--config", str(DIGITS), "--set", "tune.alpha=[0.5, 2.0]"])
    assert code == 2
    assert "tune.alpha" in capsys.readouterr().err


class FileLog:
    """Every file this process opens for writing and every rename, seen through Python's audit hooks
    (``sys.addaudithook``; a hook cannot be removed, so one is installed per process, by :meth:`get`,
    and it records only while ``on``)."""

    _instance = None

    def __init__(self):
        self.on, self.written, self.renamed = False, [], []
        sys.addaudithook(self._hook)

    @classmethod
    def get(cls) -> "FileLog":
        if cls._instance is None:
            cls._instance = cls()
        cls._instance.written.clear(), cls._instance.renamed.clear()
        return cls._instance

    def _hook(self, event, args):
        if not self.on:
            return
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if (mode and set(mode) & set("wax+")) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR)):
                self.written.append(Path(os.fsdecode(args[0])))
        elif event == "os.rename":
            self.renamed.append((Path(os.fsdecode(args[0])), Path(os.fsdecode(args[1]))))


class PickledSearcher(tune.search.Searcher):
    """A minimal real ``Searcher`` whose whole state is pickled (as Optuna's is)."""

    def __init__(self):
        super().__init__(metric="val_accuracy", mode="max")
        self.points = [0.5, 2.0]

    def suggest(self, trial_id):
        return {"temperature": self.points[0]}

    def save(self, checkpoint_path):
        import pickle

        Path(checkpoint_path).write_bytes(pickle.dumps(self.points))

    def restore(self, checkpoint_path):
        import pickle

        self.points = pickle.loads(Path(checkpoint_path).read_bytes())


@pytest.mark.parametrize("kind", ["variants", "searcher"])
def test_a_searchers_state_enters_the_staging_folder_only_as_whole_files_by_rename(tmp_path, kind):
    # Tune uploads its staging folder on a thread while the next snapshot rewrites it; Tune's own
    # searchers save through a temporary file created in that folder and renamed away, which breaks an
    # upload that listed it (tuning/snapshots.py). Ours write elsewhere and rename each finished file in.
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.search_generator import SearchGenerator

    from raydistill.tuning.snapshots import StagedSearchGenerator, StagedVariantGenerator

    def make(staged: bool):
        if kind == "variants":
            return (StagedVariantGenerator if staged else BasicVariantGenerator)(max_concurrent=2, random_state=7)
        return (StagedSearchGenerator if staged else SearchGenerator)(PickledSearcher())

    staging, plain = tmp_path / "exp" / "driver_artifacts", tmp_path / "plain"
    staging.mkdir(parents=True), plain.mkdir()
    log = FileLog.get()
    log.on = True
    try:
        make(staged=False).save_to_dir(str(plain), session_str="s1")
        tune_writes = [p for p in log.written if p.parent == plain]
        log.written.clear()
        saved = make(staged=True)
        saved.save_to_dir(str(staging), session_str="s1")
    finally:
        log.on = False
    assert any(p.name.startswith(".") and "tmp" in p.name for p in tune_writes)  # Tune's own: a temp file there
    assert [p for p in log.written if p.parent == staging] == []  # ours: nothing written inside the folder
    arrived = sorted(dst.name for src, dst in log.renamed if dst.parent == staging and src.parent != staging)
    assert arrived == sorted(p.name for p in staging.iterdir()) == sorted(p.name for p in plain.iterdir())
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["driver_artifacts"]  # no scratch left
    restored = make(staged=True)
    restored.restore_from_dir(str(staging))
    if kind == "searcher":
        assert restored.searcher.points == [0.5, 2.0]
    else:
        state, again = saved.get_state(), restored.get_state()
        assert again["max_concurrent"] == 2
        assert again["_random_state"].uniform(0, 1) == state["_random_state"].uniform(0, 1)  # the same next draw


def test_report_helpers_pick_the_best_finished_trial_and_the_exception_line():
    from raydistill.tuning.report import best_row, epoch_history, error_message, format_top_table

    rows = [{"trial_id": "a", "status": "TERMINATED", "score": 0.8}, {"trial_id": "b", "status": "ERROR", "score": 0.99},
            {"trial_id": "c", "status": "TERMINATED", "score": 0.9}, {"trial_id": "d", "status": "TERMINATED",
                                                                       "score": math.nan}]
    assert best_row(rows, "max")["trial_id"] == "c"
    assert best_row(rows, "min")["trial_id"] == "a"
    # found by review: a diverged trial (NaN validation loss) was ranked by its score and chosen, then
    # its NaN weights made the sweep's finish raise; now it is listed as diverged and never chosen
    for r, loss in zip(rows, (0.5, 0.4, math.nan, 0.3)):
        r.update(final_val_loss=loss, method="kd", temperature=2.0, alpha=0.5, lr=1e-3, epochs_run=3,
                 wall_time_s=1.0, error="", best_val_accuracy=r["score"], early_stopped=False, chosen=False)
    assert best_row(rows, "max")["trial_id"] == "a"
    assert best_row([rows[2]], "max") is None  # every trial diverged: "no trial succeeded", exit 1
    table = format_top_table(rows, mode="max", k=5, metric="val_accuracy")
    assert "c" not in [line.split()[1] for line in table.splitlines()[2:] if not line.startswith("   -")]
    assert "DIVERGED: validation loss is NaN/inf" in table and "ERROR: " in table
    trace = "Failure # 1\nTraceback (most recent call last):\n  File x\nRuntimeError: boom\n\nray::X\nValueError: bad\n"
    assert error_message(trace) == "ValueError: bad"
    progress = pd.DataFrame({"epoch": [1, 2, 2, 3], "val_accuracy": [0.1, 0.2, 0.25, 0.3]})
    assert epoch_history(progress)["val_accuracy"].tolist() == [0.1, 0.25, 0.3]  # resumed epoch kept once


def test_a_progress_log_restarted_past_its_gap_is_filled_from_the_trials_own_record():
    from raydistill.tuning.report import fill_history, missing_epochs

    progress = pd.DataFrame({"epoch": [3, 4], "val_accuracy": [0.3, 0.4]})  # Tune's log lost epochs 1-2
    record = [{"epoch": e, "val_accuracy": e / 10 + 0.01} for e in (1, 2, 3, 4)]  # the checkpoint's history
    assert missing_epochs(progress) == [1, 2] and missing_epochs(progress.iloc[:0]) == []
    filled = fill_history(progress, record)
    assert filled["epoch"].tolist() == [1, 2, 3, 4]
    assert filled["val_accuracy"].tolist() == pytest.approx([0.11, 0.21, 0.3, 0.4])  # logged rows kept
    assert fill_history(filled, record) is filled  # nothing missing: unchanged


# --- Ray tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    """One 6-trial ASHA sweep on digits (3 samples x 2 methods) whose trial #2 always raises; no
    teacher in storage yet, so the sweep trains one first."""
    from raydistill.tuning.sweep import run_sweep

    storage = tmp_path_factory.mktemp("tune") / "runs"
    cfg = tune_config(storage, "tune.num_samples=3", "tune.method=[kd, dkd+lskd]", "tune.max_epochs=4", "tune.grace_period=1",
                      "tune.reduction_factor=2", "tune.fail_trial=2", "tune.max_retries=1", "tune.top_k=3")
    return cfg, run_sweep(cfg)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_sweep_writes_one_row_per_trial_and_reports_the_failing_trial(sweep):
    cfg, result = sweep
    frame = pd.read_csv(result.sweep_dir / "results.csv")
    assert len(frame) == 6 and frame["trial_id"].is_unique
    failed = frame[frame["status"] == "ERROR"]
    assert failed["trial_index"].tolist() == [2]
    assert "fault injection" in failed["error"].iloc[0]
    assert failed["retries"].iloc[0] == cfg.tune.max_retries + 1  # first run + each retry failed
    done = frame[frame["status"] == "TERMINATED"]
    assert len(done) == 5 and done["epochs_run"].between(1, 4).all()
    assert (done["early_stopped"] == (done["epochs_run"] < 4)).all()
    # ASHA stops a trial only where it reports at a rung: grace * rf^k epochs below max_epochs
    grace, rf, max_epochs = cfg.tune.grace_period, cfg.tune.reduction_factor, cfg.tune.max_epochs
    rungs = {grace * rf ** k for k in range(max_epochs) if grace * rf ** k < max_epochs}  # {1, 2}
    assert set(done.loc[done["early_stopped"], "epochs_run"]) <= rungs
    # what ASHA saved, in sweep.json: trial-epochs run of num_trials x max_epochs
    summary = json.loads((result.sweep_dir / "sweep.json").read_text())
    assert summary["trial_epochs"] == {"run": int(frame["epochs_run"].sum()), "budget": 6 * max_epochs}
    assert done["final_val_accuracy"].between(0, 1).all()
    assert (done["best_val_accuracy"] >= done["final_val_accuracy"]).all()
    assert done["temperature"].between(1, 20).all() and done["alpha"].between(0, 1).all()
    assert frame["method"].value_counts().to_dict() == {"kd": 3, "dkd+lskd": 3}  # the grid axis
    best = done.loc[done["final_val_accuracy"].idxmax()]
    assert frame["chosen"].sum() == 1 and bool(frame.loc[best.name, "chosen"])
    assert result.best["trial_id"] == best["trial_id"]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_sweep_plots_are_valid_pngs(sweep):
    import matplotlib.image

    _, result = sweep
    for name in ("heatmap.png", "curves.png"):
        path = result.sweep_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # something was drawn


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_chosen_student_loads_and_its_test_accuracy_matches_card_and_table(sweep):
    from raydistill.core.artifacts import load_artifact, resolve_artifact
    from raydistill.core.data import load_data
    from raydistill.core.engine import evaluate

    cfg, result = sweep
    assert resolve_artifact("chosen", cfg.storage_dir()) == result.artifact.resolve()
    model, card = load_artifact(result.artifact)
    bundle = load_data(cfg.data, cfg.run.seed)
    measured = evaluate(model, bundle.x_test, bundle.y_test)["accuracy"]
    frame = pd.read_csv(result.sweep_dir / "results.csv")
    chosen = frame[frame["chosen"]].iloc[0]
    assert measured == pytest.approx(card["metrics"]["test_accuracy"]) == pytest.approx(chosen["test_accuracy"])
    assert card["kind"] == "student" and card["metrics"]["val_accuracy"] == pytest.approx(chosen["final_val_accuracy"])
    assert card["tune"]["sweep"] == str(result.sweep_dir) and card["tune"]["trial_id"] == chosen["trial_id"]
    assert card["tune"]["best_config"]["temperature"] == pytest.approx(chosen["temperature"])
    assert card["tune"]["best_config"]["alpha"] == pytest.approx(chosen["alpha"])
    assert card["tune"]["best_config"]["method"] == chosen["method"] == card["distillation"]["method"]
    teacher = Path(cfg.storage_dir()) / "artifacts" / "teacher"
    assert [Path(p["path"]).parent for p in card["parents"]] == [teacher] and card["parents"][0]["kind"] == "teacher"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_best_yaml_loads_and_runs_a_distill(sweep):
    from raydistill.core.artifacts import load_card
    from raydistill.training.driver import distill_student

    _, result = sweep
    best = load_config(result.sweep_dir / "best.yaml")
    assert best.distill.temperature == pytest.approx(result.best["temperature"])
    assert best.distill.alpha == pytest.approx(result.best["alpha"])
    assert best.distill.method == result.best["method"]
    assert Path(best.distill.teacher).is_dir()
    quick = load_config(result.sweep_dir / "best.yaml", ["distill.epochs=1", "distill.workers=1"])
    card = load_card(distill_student(quick))
    assert card["distillation"]["temperature"] == pytest.approx(result.best["temperature"])
    assert card["distillation"]["method"] == result.best["method"]
    assert card["parents"][0]["path"] == best.distill.teacher
    assert 0 < card["metrics"]["test_accuracy"] <= 1


class InterruptAfterTrials(tune.Callback):
    """Sends this process SIGUSR1 (Tune's "stop and save state" signal, like Ctrl+C) at the first
    result of a non-final epoch after ``n`` trials have completed, i.e. after Tune has logged that
    epoch but before it has registered the epoch's checkpoint (the narrowest window); a marker keeps
    it from firing again after the restore. A final epoch's result is skipped: Tune may finish that
    trial before it handles the signal, and then there is nothing left to resume."""

    def __init__(self, n: int, marker: Path, last_epoch: int):
        self.n, self.marker, self.last_epoch, self.completed = n, Path(marker), last_epoch, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.completed >= self.n and result["epoch"] < self.last_epoch and not self.marker.exists():
            self.marker.write_text(f"interrupted after {self.completed} trials, at {trial.trial_id} "
                                   f"epoch {result['epoch']}\n")
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_session, storage, local_teacher, capsys):
    from raydistill.cli.commands import main
    from raydistill.tuning.sweep import run_sweep

    # Prepare: a 2 x 3 grid, full budget, interrupted once two trials have finished
    cfg = tune_config(storage, "tune.scheduler=none", "tune.max_epochs=3", "tune.grace_period=1",
                      "tune.temperature_search=grid",
                      "tune.temperature=[2, 8]", "tune.alpha_search=grid", "tune.alpha=[0.3, 0.6, 0.9]",
                      "tune.num_samples=1", "run.quiet=false", teacher=local_teacher)
    first = run_sweep(cfg, callbacks=[InterruptAfterTrials(2, storage / "interrupted", last_epoch=3)])
    assert first.interrupted and first.artifact is None
    out = capsys.readouterr().out
    assert "resume with: raydistill tune --resume" in out
    finished = {r["trial_id"]: r for r in first.rows if r["status"] == "TERMINATED"}
    assert 2 <= len(finished) < 6
    # one line per finished trial, counted, with the best score so far (Tune's own tables are off)
    lines = re.findall(r"^tune: trial (\d+)/6 (\S+) .* \(best (\d\.\d+)\)$", out, re.M)
    assert [int(n) for n, _, _ in lines] == list(range(1, len(finished) + 1))
    assert {tid for _, tid, _ in lines} == set(finished)
    assert float(lines[-1][2]) == pytest.approx(max(r["score"] for r in finished.values()), abs=5e-5)
    assert "Trial Status" not in out and "TERMINATED" not in out
    progress = {tid: _progress_file(first.sweep_dir, tid).read_bytes() for tid in finished}
    # Execute: resume through the CLI
    code = main(["tune", "--resume", str(first.sweep_dir), "--set", "run.quiet=true"])
    # Assert: all six trials done, the finished ones untouched, no epoch run twice
    assert code == 0
    frame = pd.read_csv(first.sweep_dir / "results.csv")
    assert len(frame) == 6 and frame["trial_id"].is_unique and set(finished) <= set(frame["trial_id"])
    assert (frame["status"] == "TERMINATED").all() and (frame["epochs_run"] == 3).all()
    for tid, before in progress.items():
        assert _progress_file(first.sweep_dir, tid).read_bytes() == before, f"trial {tid} was rerun"
    cut_trial, cut_epoch = _interrupted_at(storage / "interrupted")
    for tid in frame["trial_id"]:
        state = _final_state(first.sweep_dir, tid)
        assert [h["epoch"] for h in state.history] == [1, 2, 3]
        row = frame.set_index("trial_id").loc[tid]
        assert row["best_val_accuracy"] == pytest.approx(max(h["val_accuracy"] for h in state.history))
    # the trial cut between its epoch's result and Tune's save resumed after that epoch, not before it
    assert _final_state(first.sweep_dir, cut_trial).resumed_at == [cut_epoch]
    assert sorted(zip(frame["temperature"], frame["alpha"])) == sorted((t, a) for t in (2.0, 8.0) for a in (0.3, 0.6, 0.9))
    assert (first.sweep_dir / "best.yaml").is_file() and (first.sweep_dir / "sweep.json").is_file()
    results = (first.sweep_dir / "results.csv").read_bytes()
    assert main(["tune", "--resume", str(first.sweep_dir)]) == 0  # finished: reported again, nothing rerun
    assert "already finished" in capsys.readouterr().out
    assert (first.sweep_dir / "results.csv").read_bytes() == results


def _interrupted_at(marker: Path) -> tuple[str, int]:
    """(trial id, epoch) written by :class:`InterruptAfterTrials` when it fired."""
    words = marker.read_text().split()
    return words[words.index("at") + 1], int(words[words.index("epoch") + 1])


def _final_state(sweep_dir: Path, trial_id: str):
    """The state in a trial's newest checkpoint directory (its history holds every epoch it ran)."""
    from raydistill.tuning.trial import load_trial_state

    (trial_dir,) = sweep_dir.glob(f"*_{trial_id}_*")
    return load_trial_state(max(trial_dir.glob("checkpoint_*")))


def _progress_file(sweep_dir: Path, trial_id: str) -> Path:
    (path,) = sweep_dir.glob(f"*_{trial_id}_*/progress.csv")
    return path


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_random_search_draws_the_same_points_again_for_the_same_run_seed(ray_session, storage, local_teacher):
    from raydistill.tuning.sweep import run_sweep

    def points(seed: int) -> list[tuple[float, float]]:
        cfg = tune_config(storage, "tune.scheduler=none", "tune.max_epochs=1", "tune.grace_period=1",
                          "tune.num_samples=3", f"run.seed={seed}", teacher=local_teacher)
        return sorted((r["temperature"], r["alpha"]) for r in run_sweep(cfg).rows)

    first, again, other = points(0), points(0), points(1)
    assert first == again  # unseeded, Tune's random variants differed from one sweep to the next
    assert first != other
    assert all(1 <= t <= 20 and 0 <= a <= 1 for t, a in first + other)  # digits.yaml: T in [1, 20], alpha in [0, 1]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_multi_worker_trials_run_ray_train_inside_the_trial(ray_session, storage, local_teacher):
    from raydistill.core.artifacts import load_artifact
    from raydistill.core.data import load_data
    from raydistill.core.engine import evaluate
    from raydistill.tuning.sweep import run_sweep

    cfg = tune_config(storage, "distill.workers=2", "tune.num_samples=1", "tune.max_epochs=2",
                      "tune.grace_period=1", "tune.scheduler=none", teacher=local_teacher)
    result = run_sweep(cfg)
    (row,) = result.rows
    assert row["status"] == "TERMINATED" and row["epochs_run"] == 2
    assert (result.sweep_dir / "train" / f"trial-{row['trial_id']}").is_dir()  # the trial's Ray Train run
    model, card = load_artifact(result.artifact)
    bundle = load_data(cfg.data, cfg.run.seed)
    assert evaluate(model, bundle.x_test, bundle.y_test)["accuracy"] == pytest.approx(card["metrics"]["test_accuracy"])
    assert card["metrics"]["epochs"] == 2 and card["tune"]["trial_id"] == row["trial_id"]


@pytest.mark.parametrize("where", ["workers", "ray_data"])
def test_a_sweeps_soft_targets_are_the_teachers_logits_on_every_training_example(ray_session, storage, local_teacher,
                                                                                 where):
    # workers (default): computed once in the sweep's process; ray_data: by an actor pool. Either way
    # every trial must see, row for row, the teacher's logits on the training set: checked against the
    # MLP written out in numpy from the artifact's weights (Linear -> ReLU -> ... -> Linear).
    import numpy as np

    from raydistill.core.artifacts import load_artifact
    from raydistill.core.data import load_data
    from raydistill.core.teachers import load_teachers
    from raydistill.tuning.inputs import shared_inputs
    from raydistill.tuning.trial import trial_settings

    cfg = tune_config(storage, f"distill.soft_targets={where}", teacher=local_teacher)
    bundle = load_data(cfg.data, cfg.run.seed)
    teachers = load_teachers(cfg, bundle)
    data = shared_inputs(cfg, bundle, teachers, trial_settings(cfg, bundle, teachers, storage / "sweep"))
    x, y, logits = data["train"]
    model, _ = load_artifact(local_teacher)
    state = {k: v.double().numpy() for k, v in model.state_dict().items()}
    weights = [(state[k], state[k[:-len("weight")] + "bias"]) for k in state if k.endswith("weight")]
    h = bundle.x_train.reshape(len(bundle.x_train), -1).astype(np.float64)
    for i, (w, b) in enumerate(weights):
        h = h @ w.T + b
        h = np.maximum(h, 0) if i < len(weights) - 1 else h
    np.testing.assert_array_equal(x, bundle.x_train)
    np.testing.assert_array_equal(y, bundle.y_train)
    np.testing.assert_allclose(logits, h, rtol=1e-4, atol=1e-4)
    assert data["val"][0] is bundle.x_val


@pytest.mark.parametrize("augment", ["{translate: 1}", "{translate: 1, mixup: 0.5}"])
def test_a_sweeps_view_cache_is_the_same_computed_here_or_by_ray_data(ray_session, storage, local_teacher, augment):
    # With distill.cached_views the trials get (x, y, idx, values, indices, rest); the view cache's own
    # formula is tested in test_views.py (mixed views: test_mixup.py). Here: the sweep's two placements hand
    # the trials the same cache (the same seeded views and partners, the same top-k), in training-set order.
    import numpy as np

    from raydistill.core.data import load_data
    from raydistill.core.teachers import load_teachers
    from raydistill.tuning.inputs import shared_inputs
    from raydistill.tuning.trial import trial_settings

    caches = {}
    for where in ("workers", "ray_data"):
        cfg = tune_config(storage, f"distill.soft_targets={where}", "distill.cached_views=2",
                          f"distill.augment={augment}", teacher=local_teacher)
        bundle = load_data(cfg.data, cfg.run.seed)
        teachers = load_teachers(cfg, bundle)
        caches[where] = shared_inputs(cfg, bundle, teachers, trial_settings(cfg, bundle, teachers, storage / where))["train"]
    here, pool = caches["workers"], caches["ray_data"]
    assert len(here) == len(pool) == 6
    np.testing.assert_array_equal(here[2], np.arange(len(bundle.y_train)))
    assert here[3].shape[:2] == (len(bundle.y_train), 2)  # (N, views, k)
    for a, b in zip(here[:3] + here[5:], pool[:3] + pool[5:], strict=True):  # x, y, idx, rest
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-3, atol=1e-3)

    def dense(values, indices):  # top-k (value, class) pairs back to (N, V, C): near-ties may swap places
        out = np.full((*values.shape[:2], bundle.num_classes), np.nan)
        np.put_along_axis(out, np.asarray(indices, np.int64), np.asarray(values, np.float64), axis=-1)
        return out

    np.testing.assert_allclose(dense(*here[3:5]), dense(*pool[3:5]), rtol=1e-2, atol=1e-2)


def test_trial_lines_carry_the_count_the_point_and_the_best_so_far():
    from raydistill.tuning.progress import better, trial_line

    assert better(0.9, None, "max") == 0.9 and better(None, 0.9, "max") == 0.9
    assert better(0.8, 0.9, "max") == 0.9 and better(0.8, 0.9, "min") == 0.8
    line = trial_line(3, 8, "a1b2c_00002", {"temperature": 4.0213, "alpha": 0.31125}, "val_accuracy", 0.96527, 0.97222)
    assert line == "tune: trial 3/8 a1b2c_00002 T=4.02 alpha=0.311 val_accuracy=0.9653 (best 0.9722)"
    with_lr = trial_line(1, 2, "x_00000", {"temperature": 2.0, "alpha": 0.5, "lr": 0.003}, "val_loss", None, None)
    assert with_lr == "tune: trial 1/2 x_00000 T=2 alpha=0.5 lr=3.00e-03 val_loss=-"
