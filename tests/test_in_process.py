"""`workers: auto` on this machine alone: Ray Train's local mode in the driver, with the
checkpoints and retries this package adds (training/in_process.py). No Ray runtime is started."""
from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys

import pytest
import torch

from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.loop import TrainState
from raydistill.training.in_process import fit_in_process
from raydistill.training.local_checkpoints import checkpoints, keep_checkpoint, newest_state

from conftest import REPO

DIGITS = REPO / "configs" / "digits.yaml"


def _state(epoch: int) -> TrainState:
    return TrainState({"w": torch.full((2,), float(epoch))}, {}, epoch, [{"epoch": e} for e in range(1, epoch + 1)])


def test_kept_checkpoints_are_the_newest_two_and_a_partial_one_is_never_read(tmp_path):
    for epoch in (1, 2, 3, 4):
        keep_checkpoint(_state(epoch), tmp_path)
    (tmp_path / ".checkpoint_000005.partial").mkdir()  # a write cut short by a crash
    (tmp_path / "checkpoint_notanumber").mkdir()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint_000003", "checkpoint_000004"]
    state = newest_state(tmp_path)
    assert state.epoch == 4 and torch.equal(state.model["w"], torch.tensor([4.0, 4.0]))
    assert newest_state(tmp_path / "none") is None


def test_a_restarted_worker_resumes_from_the_newest_persisted_checkpoint_not_only_the_registered_one(tmp_path):
    # Prepare: a Train v2 run directory (timestamp names) with epochs 1 and 2 persisted, a newer
    # epoch-3 directory whose state file was cut short, and Ray's own files beside them.
    import pyarrow.fs as pafs

    from raydistill.core.loop import STATE_FILE, save_train_state
    from raydistill.training.resume import newest_of, newest_persisted_state

    run = tmp_path / "ray_results" / "distill-run"
    for name, epoch in (("checkpoint_2026-12-02_08-10-11.100000", 1), ("checkpoint_2026-12-02_08-10-12.200000", 2)):
        (run / name).mkdir(parents=True)
        save_train_state(_state(epoch), run / name / STATE_FILE)
    (run / "checkpoint_2026-12-02_08-10-13.300000").mkdir()
    (run / "checkpoint_2026-12-02_08-10-13.300000" / STATE_FILE).write_bytes(b"PK\x03\x04 cut short")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")

    class Storage:  # the two attributes Ray's storage context exposes to a worker
        storage_filesystem = pafs.LocalFileSystem()
        experiment_fs_path = str(run)

    # Execute and assert: the unreadable newest falls back to epoch 2, which beats a registered epoch 1.
    found = newest_persisted_state(Storage())
    assert found.epoch == 2 and torch.equal(found.model["w"], torch.tensor([2.0, 2.0]))
    assert newest_of(_state(1), found).epoch == 2 and newest_of(None, None) is None
    Storage.experiment_fs_path = str(tmp_path / "no-such-run")
    assert newest_persisted_state(Storage()) is None and newest_persisted_state(None) is None


def _loop_config(tmp_path, *overrides: str, crash_at_epoch: int = -1) -> dict:
    from raydistill.training.driver import student_spec

    cfg = load_config(DIGITS, ["distill.epochs=4", "distill.optimizer=sgd", "distill.lr=0.05",
                               "distill.scheduler=cosine", "distill.warmup_epochs=1", *overrides])
    bundle = load_data(cfg.data, cfg.run.seed)
    return {"spec": student_spec(cfg, bundle, kd=None, stage="baseline"),
            "data": {"train": (bundle.x_train, bundle.y_train), "val": (bundle.x_val, bundle.y_val)},
            "threads": 1, "verbose": False, "crash_at_epoch": crash_at_epoch,
            "crash_marker": str(tmp_path / "faults" / "crashed")}


def test_a_failed_attempt_resumes_from_its_checkpoint_and_ends_with_the_uninterrupted_weights(tmp_path):
    # Execute: the same run straight, and failing once before epoch 3 with one retry allowed.
    straight = fit_in_process(_loop_config(tmp_path), run_dir=tmp_path / "straight", max_failures=0)
    resumed = fit_in_process(_loop_config(tmp_path, crash_at_epoch=2), run_dir=tmp_path / "resumed", max_failures=1)
    # Assert: it failed once, restarted from epoch 2's checkpoint (not from 0), and optimizer,
    # schedule and shuffles carried on: the written lr schedule and the same weights.
    assert "crashed at epoch 2" in (tmp_path / "faults" / "crashed").read_text()
    assert straight.resumed_at == [] and resumed.resumed_at == [2]
    expected_lr = [0.05 * 0.5, *(0.05 * 0.5 * (1 + math.cos(math.pi * t / 3)) for t in range(3))]
    for state in (straight, resumed):
        assert [h["epoch"] for h in state.history] == [1, 2, 3, 4]
        assert [h["lr"] for h in state.history] == pytest.approx(expected_lr)
    for name, weight in straight.model.items():
        assert torch.allclose(weight, resumed.model[name], atol=1e-6), name


def test_without_retries_the_failure_reaches_the_caller(tmp_path):
    with pytest.raises(RuntimeError, match="fault injection"):
        fit_in_process(_loop_config(tmp_path, crash_at_epoch=1), run_dir=tmp_path / "run", max_failures=0)
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["checkpoint_000001"]  # what it got done is kept


def test_baseline_command_trains_in_process_without_starting_ray(tmp_path):
    # Execute: the real command, as a user on a laptop runs it (no cluster address).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path / "ray")
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "baseline", "--config", str(DIGITS),
                           "--set", f"run.storage_path={tmp_path / 'runs'}", "--set", "distill.epochs=2",
                           "--set", "data.val_fraction=0", "--set", "pipeline.tune=false"],
                          capture_output=True, text=True, timeout=300, env=env)
    # Assert: trained, epochs logged once each, no Ray runtime started, card says how it ran
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[baseline] epoch 1/2") == 1 and "baseline artifact:" in proc.stdout
    assert "val_accuracy=- " in proc.stdout  # no validation split: no made-up 0.0000
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert not (tmp_path / "ray").exists()  # Ray writes its session there when it starts
    (card_path,) = (tmp_path / "runs" / "artifacts" / "baseline").glob("*/model.json")
    training = json.loads(card_path.read_text())["training"]
    expected_threads = len(os.sched_getaffinity(0))
    assert training["in_process"] is True and training["workers"] == 1
    assert training["threads_per_worker"] == expected_threads


def test_epoch_lines_are_the_first_the_last_and_one_per_tenth():
    from raydistill.core.progress import worth_a_line

    lines = [e for e in range(1, 61) if worth_a_line(e, 60)]
    assert lines == [1, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60]  # floor(10 e / 60) steps at multiples of 6
    assert [e for e in range(1, 11) if worth_a_line(e, 10)] == list(range(1, 11))
    assert [e for e in range(1, 4) if worth_a_line(e, 3)] == [1, 2, 3]
    assert [e for e in range(1, 201) if worth_a_line(e, 200)] == [1, *range(20, 201, 20)]


def test_a_progress_record_is_plain_json_for_ray_trains_json_log_handler():
    # Ray Train workers attach ray._common.formatters.JSONFormatter to the root logger; an epoch line
    # must go through it (a Progress object in the record made it print a traceback per epoch).
    import logging

    import numpy as np
    from ray._common.formatters import JSONFormatter

    from raydistill.core.progress import Progress, log_progress

    caught = []
    handler = logging.Handler()
    handler.emit = caught.append
    logger = logging.getLogger("raydistill.test_progress_record")
    logger.addHandler(handler)
    try:
        log_progress(logger, Progress("student", 3, 20, {"loss": "0.1234", "best": np.float32(0.5)}), "an epoch")
    finally:
        logger.removeHandler(handler)

    (record,) = caught
    formatted = json.loads(JSONFormatter().format(record))
    assert formatted["message"] == "an epoch"
    assert formatted["progress"] == {"task": "student", "done": 3, "total": 20,
                                     "postfix": {"loss": "0.1234", "best": "0.5"}}
    assert Progress.of(record) == Progress("student", 3, 20, {"loss": "0.1234", "best": "0.5"})
    assert Progress.of(logging.makeLogRecord({"msg": "no progress"})) is None


def _baseline_console(tmp_path, epochs: int, *, terminal: bool) -> str:
    """What `raydistill baseline` writes to stdout, attached to a pseudo-terminal or to a pipe."""
    import pty

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(tmp_path / "ray"), COLUMNS="120")
    args = [sys.executable, "-m", "raydistill.cli.commands", "baseline", "--config", str(DIGITS),
            "--set", f"run.storage_path={tmp_path / 'runs'}", "--set", f"distill.epochs={epochs}",
            "--set", "run.tracking=false"]
    if not terminal:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(args, stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:  # until the child closes its end (EIO on Linux once it has exited)
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_gets_a_live_bar_and_a_pipe_gets_one_line_per_tenth(tmp_path):
    # Execute: the same 20-epoch stage with stdout on a pseudo-terminal, then on a pipe.
    tty = _baseline_console(tmp_path / "tty", 20, terminal=True)
    piped = _baseline_console(tmp_path / "pipe", 20, terminal=False)
    # Assert: the terminal shows one bar redrawn in place (carriage returns), reaching 20/20 with the
    # latest loss and val accuracy, and no per-epoch lines; the pipe has the 11 milestone lines only.
    assert "\r" in tty and "baseline: 100%" in tty and "20/20" in tty and "val_acc=" in tty
    assert "[baseline] epoch" not in tty and "baseline artifact:" in tty
    epochs = [int(e) for e in re.findall(r"^\[baseline\] epoch (\d+)/20 ", piped, re.M)]
    assert epochs == [1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20] and "\r" not in piped


def _wait_for(predicate, proc: subprocess.Popen, timeout_s: float = 240.0) -> bool:
    """Poll ``predicate`` until it holds, the process ends, or ``timeout_s`` passes (a hard cap)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.timeout(300)
def test_distill_whose_driver_was_killed_goes_on_from_its_last_checkpoint_with_resume(tmp_path, local_teacher):
    # Prepare: a distill run long enough to be killed mid-way (SIGKILL from outside: no handler runs).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path / "ray")
    runs = tmp_path / "runs"
    epochs = 120
    cmd = [sys.executable, "-m", "raydistill.cli.commands", "distill", "--config", str(DIGITS),
           "--set", f"run.storage_path={runs}", "--set", f"distill.teacher={local_teacher}",
           "--set", f"distill.epochs={epochs}", "--set", "distill.batch_size=256"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def kept_epoch() -> int:
        found = sorted(runs.glob("ray_results/student-*/checkpoint_*"))
        return int(found[-1].name.split("_")[1]) if found else 0

    assert _wait_for(lambda: kept_epoch() >= 5, first), first.stderr.read().decode()[-2000:]
    first.kill()  # the driver dies between two epochs' checkpoints, or in the middle of one
    first.wait(timeout=60)
    assert first.returncode == -9
    (run_dir,) = runs.glob("ray_results/student-*")
    killed_at = kept_epoch()
    assert 5 <= killed_at < epochs and not list(runs.glob("artifacts/student/*"))
    # Execute: the same command's --resume with only the run dir (config, teacher, seed are the run's own)
    resumed = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "distill", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=280, env=env)
    # Assert: a whole, verified artifact whose history holds every epoch exactly once, resumed where it died
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    from raydistill.core.artifacts import load_artifact

    (artifact,) = runs.glob("artifacts/student/*")
    model, card = load_artifact(artifact)  # sha256 verified
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [h["epoch"] for h in card["metrics"]["history"]] == list(range(1, epochs + 1))
    assert card["metrics"]["resumed_at_epochs"] == [killed_at]  # nothing before it was trained twice
    assert card["parents"][0]["sha256"] == json.loads((local_teacher / "model.json").read_text())["weights_sha256"]


def test_resume_names_what_is_wrong_with_the_folder(tmp_path, local_teacher):
    from raydistill.cli.commands import main

    assert main(["distill", "--resume", str(tmp_path)]) == 2  # no run record
    (tmp_path / "raydistill_run.json").write_text(json.dumps({"stage": "teacher", "seed": 0, "in_process": True,
                                                             "config": load_config(DIGITS).to_dict()}))
    from raydistill.core.config import ConfigError
    from raydistill.training.resume import resumed_run

    with pytest.raises(ConfigError, match="is a teacher run; resume it with `raydistill teacher --resume"):
        resumed_run(load_config(DIGITS), tmp_path, stage="student")
    # a damaged record (found by review: a TypeError / KeyError traceback) is named, exit 2
    for damaged, why in (("[]", "a JSON list, not an object"), ('{"stage": "student", "config": {}}', "no 'seed' entry")):
        (tmp_path / "raydistill_run.json").write_text(damaged)
        with pytest.raises(ConfigError, match=f"raydistill_run.json is unreadable \\({why}\\)"):
            resumed_run(load_config(DIGITS), tmp_path, stage="student")
        assert main(["distill", "--resume", str(tmp_path)]) == 2
