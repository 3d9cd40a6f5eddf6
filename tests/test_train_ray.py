"""Ray Train stages on the shared local runtime: the README's pipeline command, DDP with 2
workers, cached soft targets, a worker crash resumed from its checkpoint, online mode, a killed
driver's run resumed on its worker actors."""
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from raydistill.core.artifacts import load_artifact, load_card, resolve_artifact
from raydistill.cli.commands import main
from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.engine import evaluate
from raydistill.core.loop import STATE_FILE, load_train_state
from raydistill.core.models import build_model

from conftest import REPO, free_port, tiny_overrides

DIGITS = str(REPO / "configs" / "digits.yaml")
pytestmark = [pytest.mark.ray]


def _sets(storage, **kw):
    return [a for o in tiny_overrides(storage, **kw) for a in ("--set", o)]


@pytest.mark.timeout(600)
def test_the_demo_runs_every_stage_in_its_own_process_and_prints_nothing_that_looks_like_a_failure(tmp_path):
    # Execute: `raydistill pipeline` as `make demo` runs it (the README's demo command, with tiny
    # epochs, a 2-trial sweep and a real Serve endpoint on a free loopback port) — its own local Ray
    # runtime (started and shut down by the command), stdout and stderr both captured as a log file
    # would be. (The jobs suite runs the same pipeline with 2 Ray Train workers on a `ray start` cluster.)
    import re

    from raydistill.serving.ingress import INGRESS_FLAGS

    # a user's shell: no cluster address, and none of the ingress flags an earlier haproxy test left in
    # this process's environment (enable_ingress sets them for the Ray it starts)
    flags = {name for kind in INGRESS_FLAGS.values() for name in kind}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in flags}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rd-", dir="/tmp")  # Ray's socket paths must stay < 108 bytes
    sets = [*tiny_overrides(tmp_path / "runs", epochs=3), "distill.workers=auto", "run.quiet=false",  # as the demo
            "tune.num_samples=2", "tune.max_epochs=2", "tune.grace_period=1", "pipeline.smoke_requests=5",
            f"serve.port={free_port()}"]
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "pipeline", "--config", DIGITS,
                           *[a for o in sets for a in ("--set", o)]],
                          capture_output=True, text=True, timeout=540, env=env, start_new_session=True)
    console = proc.stdout + proc.stderr
    # Assert: it worked, and no line a reader would take for a failure: no "failed"/"error" words, no
    # C++ log lines (E/W + date), no "(raylet)" messages, no tracebacks
    assert proc.returncode == 0, console[-3000:]
    assert "5 smoke requests" in proc.stdout and "(shut down)" in proc.stdout
    # one known exception, seen once in 3 fresh-clone runs: a Tune trial actor's interpreter, exiting,
    # prints CPython's "Exception ignored in: <function WeakSet...._remove>" and its traceback header
    # (a garbage-collection race at shutdown, not raydistill code); see the closing note of 2026-12-02
    lines = console.splitlines()
    shutdown_gc = {i + k for i, line in enumerate(lines) if "Exception ignored in: <function WeakSet" in line
                   for k in range(0, 5)}
    # a second, seen once in 5 fresh-clone runs (2026-12-03, exit code still 0): a Ray Data task worker's
    # C++ core aborts on abseil's "Mutex corrupt" check; only that worker's two lines (by pid) are excused
    aborted = {m.group(1) for line in lines if "Mutex corrupt: both reader and writer lock held" in line
               for m in [re.search(r"\((?:get_table_block_metadata_schema|ReadTask|MapBatches\S*) pid=(\d+)\)", line)]
               if m}
    shutdown_gc |= {i for i, line in enumerate(lines) for pid in aborted if f" pid={pid})" in line
                    and ("[mutex.cc" in line or "Fatal Python error: Aborted" in line)}
    alarming = [line for i, line in enumerate(lines) if i not in shutdown_gc
                if re.search(r"\b(fail(ed|ure)?|error|exception|traceback)\b", line, re.IGNORECASE)
                or re.match(r"\[?[EW]\d{4} |\[\d{4}-\d\d-\d\d [\d:,]+ [EW] \d+", line) or "(raylet)" in line
                or re.search(r"\w+Warning\b", line)]  # a Python warning (DeprecationWarning, ...) too
    assert alarming == [], "\n".join(alarming)
    assert "Started a local Ray instance" not in console  # Ray's INFO start-up line is bookkeeping
    # a console a person reads: no Ray bookkeeping lines (run.verbose brings them back)
    for noise in ("TrainingReport(", "Checkpoint successfully created", "Configuration for experiment",
                  "Started Serve in namespace", "Creating initial MLflow database tables", "execution finished in"):
        assert noise not in console
    # the summary names every model, the sweep chose T/alpha, the student is the chosen one
    for row in ("teacher", "student-alone", "distilled-student"):
        assert re.search(rf"^{row}\s+\S+\s+0\.\d{{4}}\s", proc.stdout, re.M), row
    assert "compression" in proc.stdout and "from the sweep" in proc.stdout
    storage = tmp_path / "runs"
    student = resolve_artifact("chosen", storage)
    assert f"chosen student: {student}" in proc.stdout
    model, card = load_artifact(student)
    teacher_path = resolve_artifact("latest:teacher", storage)
    assert card["parents"][0]["path"] == str(teacher_path)
    assert card["parents"][0]["sha256"] == load_card(teacher_path)["weights_sha256"]
    assert card["distillation"]["mode"] == "cached" and len(card["metrics"]["history"]) == 3
    bundle = load_data(load_config(DIGITS).data, 0)
    assert evaluate(model, bundle.x_test, bundle.y_test)["accuracy"] == pytest.approx(card["metrics"]["test_accuracy"])
    assert load_card(teacher_path)["metrics"]["test_accuracy"] > 0.85
    assert len(list((storage / "artifacts" / "baseline").iterdir())) == 1


@pytest.mark.timeout(400)
def test_a_run_whose_worker_crashed_resumes_from_a_checkpoint_and_ends_with_the_uninterrupted_weights(
        ray_session, storage, local_teacher):
    # Prepare: a cosine schedule with warm-up and SGD momentum, two workers, run twice with the same seed.
    base = ["distill", "--config", DIGITS, *_sets(storage, epochs=4, workers=2), "--set", f"distill.teacher={local_teacher}",
            "--set", "distill.optimizer=sgd", "--set", "distill.lr=0.05", "--set", "distill.scheduler=cosine",
            "--set", "distill.warmup_epochs=1", "--set", "distill.max_failures=1"]
    # Execute: uninterrupted, then the same run whose worker of rank 0 dies once at epoch 2 (a config
    # hook, no code edits).
    assert main(base) == 0
    straight_model, straight = load_artifact(resolve_artifact("chosen", storage))
    assert main([*base, "--set", "distill.crash_at_epoch=2"]) == 0
    resumed_model, resumed = load_artifact(resolve_artifact("chosen", storage))
    # Assert: the crash happened once, the run finished every epoch, restarted once from a saved
    # checkpoint (epoch 1 or 2: Train V2 registers reports asynchronously, so the newest one may not be
    # registered when the worker dies), not from 0...
    markers = list((storage / "faults").iterdir())
    assert len(markers) == 1 and "epoch 2" in markers[0].read_text()
    assert [h["epoch"] for h in resumed["metrics"]["history"]] == [1, 2, 3, 4]
    assert len(resumed["metrics"]["resumed_at_epochs"]) == 1 and resumed["metrics"]["resumed_at_epochs"][0] in (1, 2)
    assert resumed["training"]["workers"] == 2 and resumed["metrics"]["test_accuracy"] > 0.5
    # ...and optimizer, schedule, shards and shuffles continued where they stopped: the same weights
    # and the same per-epoch lr as the written schedule.
    expected_lr = [0.05 * 0.5, *(0.05 * 0.5 * (1 + math.cos(math.pi * t / 3)) for t in range(3))]
    for card in (straight, resumed):
        assert [h["lr"] for h in card["metrics"]["history"]] == pytest.approx(expected_lr)
    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.timeout(240)
def test_online_mode_distills_with_the_teacher_in_the_worker(ray_session, storage, local_teacher):
    args = ["distill", "--config", DIGITS, *_sets(storage, epochs=3, workers=1),
            "--set", f"distill.teacher={local_teacher}", "--set", "distill.mode=online",
            "--set", "distill.lr=0.01"]
    assert main(args) == 0
    _, card = load_artifact(resolve_artifact("chosen", storage))
    assert card["distillation"]["mode"] == "online"
    assert card["metrics"]["test_accuracy"] > 0.6
    # one worker on the session's 2 CPUs trains on 2 torch threads (Ray alone would give it 1)
    assert card["training"]["workers"] == 1 and card["training"]["threads_per_worker"] == 2
    assert {h["threads"] for h in card["metrics"]["history"]} == {2}
    # classic mixup on two workers, the teacher labelling the mixtures (the loss on them: test_mixup.py): the
    # same seeded run without it draws the same shifts, so a worker that skipped the mixing would train alike
    two = ["distill", "--config", DIGITS, *_sets(storage, epochs=2, workers=2),
           "--set", f"distill.teacher={local_teacher}", "--set", "distill.mode=online", "--set", "distill.lr=0.01"]
    losses = {}
    for augment in ("{translate: 1}", "{translate: 1, mixup: 0.5, mixup_alpha: 0.4}"):
        assert main([*two, "--set", f"distill.augment={augment}"]) == 0
        _, card = load_artifact(resolve_artifact("latest:student", storage))
        assert card["distillation"]["mode"] == "online" and card["training"]["workers"] == 2
        assert card["metrics"]["test_accuracy"] > 0.5 and len(card["metrics"]["history"]) == 2
        losses[card["training"]["augment"]["mixup"]] = [h["train_loss"] for h in card["metrics"]["history"]]
    assert card["training"]["augment"]["mixup_alpha"] == 0.4
    assert losses[0.5][0] != pytest.approx(losses[0.0][0], rel=1e-3)


@pytest.mark.timeout(240)
def test_cached_views_are_built_by_ray_data_and_trained_on_by_two_workers(ray_session, storage, local_teacher, capsys):
    base = ["distill", "--config", DIGITS, *_sets(storage, epochs=2, workers=2), "--set", f"distill.teacher={local_teacher}",
            "--set", "distill.mode=cached", "--set", "distill.augment={translate: 1}", "--set", "distill.lr=0.01"]
    # augmenting on clean cached targets is refused before any work, pointing at the fix
    assert main(base) == 2
    assert "set distill.cached_views=K" in capsys.readouterr().err
    assert main([*base, "--set", "distill.cached_views=3", "--set", "distill.soft_targets=ray_data",
                 "--set", "distill.cache_topk=4"]) == 0
    _, card = load_artifact(resolve_artifact("chosen", storage))
    assert card["distillation"]["cached_views"] == 3 and card["distillation"]["cache_topk"] == 4
    assert card["training"]["workers"] == 2 and card["training"]["augment"]["translate"] == 1
    assert card["metrics"]["test_accuracy"] > 0.5 and len(card["metrics"]["history"]) == 2
    # mixed views (function matching), each worker caching its own share: both draw partners from the whole
    # training set (the Ray Data actor's mixtures: test_mixup.py and test_tune.py)
    mixed = [arg.replace("{translate: 1}", "{translate: 1, mixup: 0.5}") for arg in base]
    assert main([*mixed, "--set", "distill.cached_views=2", "--set", "distill.soft_targets=workers"]) == 0
    _, card = load_artifact(resolve_artifact("latest:student", storage))
    assert card["training"]["augment"]["mixup"] == 0.5 and card["distillation"]["cached_views"] == 2
    assert card["metrics"]["test_accuracy"] > 0.5 and len(card["metrics"]["history"]) == 2


@pytest.mark.timeout(240)
def test_fitnet_distills_on_two_workers_and_the_artifact_is_the_student_alone(ray_session, storage, local_teacher,
                                                                                capsys):
    base = ["distill", "--config", DIGITS, *_sets(storage, epochs=2, workers=2), "--set", f"distill.teacher={local_teacher}",
            "--set", "distill.mode=online", "--set", "distill.method=fitnet", "--set", "distill.lr=0.01"]
    # a layer the student does not have: refused before training, naming the key and the layers it has
    assert main([*base, "--set", "distill.guided_layer=layer9"]) == 2
    assert "student (distill.guided_layer) has no layer 'layer9'; its top-level layers: 0, 1, 2, 3" in capsys.readouterr().err

    assert main([*base, "--set", "distill.hint_weight=5"]) == 0

    model, card = load_artifact(resolve_artifact("chosen", storage))
    assert card["distillation"] == {"temperature": card["distillation"]["temperature"], "alpha": card["distillation"]["alpha"],
                                    "mode": "online", "method": "fitnet", "hint_weight": 5.0, "hint_layer": "auto",
                                    "guided_layer": "auto"}
    assert card["training"]["workers"] == 2
    # the connector trained alongside is not part of the student: the weights are the architecture's own
    fresh = build_model(card["architecture"]["name"], card["input_shape"], 10, card["architecture"]["args"])
    assert model.state_dict().keys() == fresh.state_dict().keys()
    assert card["metrics"]["test_accuracy"] > 0.5 and len(card["metrics"]["history"]) == 2


def test_corrupted_teacher_is_a_clear_error_before_training(ray_session, storage, local_teacher, tmp_path, capsys):
    import shutil

    bad = shutil.copytree(local_teacher, tmp_path / "bad-teacher")
    (bad / "weights.pt").write_bytes(b"garbage")
    rc = main(["distill", "--config", DIGITS, *_sets(storage), "--set", f"distill.teacher={bad}"])
    assert rc == 2
    assert "sha256 mismatch" in capsys.readouterr().err


@pytest.mark.timeout(420)
def test_distill_on_two_worker_actors_whose_driver_was_killed_goes_on_from_its_last_checkpoint(tmp_path, local_teacher):
    # Prepare: a distill run on 2 Ray Train worker actors, in its own process and its own Ray runtime
    # (ray.init's node processes share the driver's fate), long enough to be killed mid-way.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    node = tempfile.mkdtemp(prefix="rd-kill-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env["RAY_TMPDIR"] = node
    runs = tmp_path / "runs"
    epochs = 20
    cmd = [sys.executable, "-m", "raydistill.cli.commands", "distill", "--config", DIGITS,
           "--set", f"run.storage_path={runs}", "--set", "run.quiet=true", "--set", f"distill.teacher={local_teacher}",
           "--set", f"distill.epochs={epochs}", "--set", "distill.workers=2", "--set", "distill.batch_size=256"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def newest_epoch() -> int:
        """The highest epoch among the run's whole checkpoints on storage (a half-written one is skipped)."""
        best = 0
        for d in runs.glob("ray_results/student-*/checkpoint_*"):
            try:
                best = max(best, load_train_state(d / STATE_FILE).epoch)
            except Exception:  # noqa: BLE001 - being written or deleted (num_to_keep) right now
                continue
        return best

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None and newest_epoch() < 3:
        time.sleep(0.05)
    assert first.poll() is None and newest_epoch() >= 3, first.stderr.read().decode()[-2000:]
    first.kill()  # SIGKILL: no handler runs
    first.wait(timeout=60)
    assert first.returncode == -9
    # Ray ends the dead driver's job: its Train controller and worker actors go (a worker may write one
    # more checkpoint first); wait for that, so the checkpoint the resumed run must pick is settled.
    while time.monotonic() < deadline and _ray_processes(node, ("ray::RayTrainWorker", "ray::TrainController")):
        time.sleep(0.05)
    assert not _ray_processes(node, ("ray::RayTrainWorker", "ray::TrainController"))
    (run_dir,) = runs.glob("ray_results/student-*")
    killed_at = newest_epoch()
    assert 3 <= killed_at < epochs and not list(runs.glob("artifacts/student/*"))
    # Execute: --resume with only the run dir (placement, config, teacher and seed are the run's own)
    try:
        resumed = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "distill", "--resume", str(run_dir)],
                                 capture_output=True, text=True, timeout=360, env=env)
    finally:
        for pid in _ray_processes(node):  # what Ray leaves of the killed runtime (its dashboard and env agents)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(node, ignore_errors=True)
    # Assert: a whole verified artifact, trained on 2 workers, every epoch once, resumed where it died
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (artifact,) = runs.glob("artifacts/student/*")
    model, card = load_artifact(artifact)  # sha256 verified
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert card["training"]["workers"] == 2
    assert [h["epoch"] for h in card["metrics"]["history"]] == list(range(1, epochs + 1))
    assert card["metrics"]["resumed_at_epochs"] == [killed_at]
    assert card["parents"][0]["sha256"] == json.loads((local_teacher / "model.json").read_text())["weights_sha256"]


def _ray_processes(node: str, titles: tuple[str, ...] = ("",)) -> list[int]:
    """Pids of the processes of the Ray runtime whose temp dir is ``node`` (they inherit
    ``RAY_TMPDIR``) whose process title starts with one of ``titles``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"RAY_TMPDIR={node}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if title.startswith(titles):
                    found.append(int(proc.name))
        except OSError:
            continue
    return found
