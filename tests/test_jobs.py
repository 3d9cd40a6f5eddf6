"""Ray jobs on a real ``ray start --head`` cluster, and cluster.yaml against Ray's own schema.

Fast tier (no Ray): cluster.yaml and its commented ``local`` variant validate; the job helpers'
storage rule; job entry points parse and fail exactly like the CLI.
Cluster tier (marker ``cluster``): one head for the module (tests/_ray_head.py: own ports, own
token, stopped without ``ray stop``); jobs go through both the ``ray job submit`` CLI and
``JobSubmissionClient``. These tests never use the session's ``ray_session`` runtime.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from _ray_head import REPO, RayHead, start_head, stop_head, wait_for_log, wait_for_status
from conftest import free_port, make_local_artifact, tiny_overrides
from raydistill.cli import commands as cli
from raydistill.core.artifacts import load_artifact, resolve_artifact
from raydistill.core.config import ConfigError, load_config
from raydistill.cli.job import (JOB_CONFIG_ENV, job_storage_path, job_submission_id, run_job, storage_root,
                             workers_miss_checkout)

CLUSTER_YAML = REPO / "cluster.yaml"
RUNTIME_ENV = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
SHIPPED = "runtime_resources/working_dir_files/"  # where a job's working-dir copy is unpacked
JOB_ENV = {JOB_CONFIG_ENV: json.dumps({"metadata": {"job_submission_id": "raysubmit_abc"}})}


# --- cluster.yaml, offline -------------------------------------------------------------------


def ray_validate(config: dict) -> dict:
    """What ``ray up`` checks before touching a cloud: defaults filled in, then the JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def local_variant(text: str) -> dict:
    """cluster.yaml with its commented ``local`` block swapped in, as its comment tells a user to do."""
    block = text.split("# --- local variant begin ---\n")[1].split("# --- local variant end ---")[0]
    replacement = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    replaced = ("provider", "auth", "available_node_types", "head_node_type")
    return {**{k: v for k, v in yaml.safe_load(text).items() if k not in replaced}, **replacement}


def test_cluster_yaml_passes_rays_schema_and_keeps_the_dashboard_private():
    config = yaml.safe_load(CLUSTER_YAML.read_text())

    prepared = ray_validate(config)

    types = prepared["available_node_types"]
    assert prepared["provider"]["type"] == "aws" and prepared["head_node_type"] == "head"
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert types["cpu_worker"]["max_workers"] > types["cpu_worker"]["min_workers"]  # autoscaling
    head_start, worker_start = config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]
    assert "--dashboard-host=127.0.0.1" in head_start
    assert all("RAY_AUTH_MODE=token" in c and "RAYDISTILL_STORAGE_ROOT=/mnt/shared" in c for c in (head_start, worker_start))
    assert config["file_mounts"]["~/raydistill"] == "." and "~/.ray/auth_token" in config["file_mounts"]
    assert any("pip install -e ~/raydistill" in c for c in config["setup_commands"])


def test_cluster_yaml_schema_check_rejects_a_typo():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["cpu_worker"]["min_worker"] = 1  # typo of min_workers

    with pytest.raises(Exception, match="min_worker"):
        ray_validate(config)


def test_cluster_yaml_local_variant_passes_rays_schema():
    config = local_variant(CLUSTER_YAML.read_text())

    prepared = ray_validate(config)

    assert prepared["provider"] == {"type": "local", "head_ip": "10.0.0.10", "worker_ips": ["10.0.0.11", "10.0.0.12"]}
    assert list(prepared["available_node_types"]) == ["local.cluster.node"]
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == 2


# --- job helpers, no Ray -----------------------------------------------------------------------


def test_relative_storage_goes_under_the_storage_root_only_inside_a_job(tmp_path):
    relative = load_config(REPO / "configs" / "digits.yaml")
    absolute = load_config(None, [f"run.storage_path={tmp_path / 'abs'}"])
    job = {**JOB_ENV, "RAYDISTILL_STORAGE_ROOT": str(tmp_path / "root")}

    inside, outside = job_storage_path(relative, job), job_storage_path(relative, {})

    assert inside == tmp_path / "root" / "runs"
    assert outside == relative.storage_dir()  # a plain run keeps the CLI's meaning: ./runs
    assert job_storage_path(absolute, job) == tmp_path / "abs"
    assert storage_root({}) == Path("~/raydistill").expanduser().resolve()
    assert job_submission_id(job) == "raysubmit_abc" and job_submission_id({}) == ""


@pytest.mark.parametrize("path", ["../outside", "runs/../../outside", "a/../../.."])
def test_a_relative_storage_path_cannot_leave_the_storage_root_in_a_job(tmp_path, path, capsys):
    job = {**JOB_ENV, "RAYDISTILL_STORAGE_ROOT": str(tmp_path / "root")}
    cfg = load_config(REPO / "configs" / "digits.yaml", [f"run.storage_path={path}"])
    with pytest.raises(ConfigError, match="run.storage_path: .* leaves RAYDISTILL_STORAGE_ROOT"):
        job_storage_path(cfg, job)
    assert job_storage_path(load_config(REPO / "configs" / "digits.yaml", ["run.storage_path=a/../b"]), job) == \
        tmp_path / "root" / "b"  # staying inside is fine
    assert run_job("teacher", ["--config", "configs/digits.yaml", "--set", f"run.storage_path={path}"], job) == 2
    assert "leaves RAYDISTILL_STORAGE_ROOT" in capsys.readouterr().err
    assert not (tmp_path / "outside").exists()


def test_missing_runtime_env_is_detected(tmp_path):
    (tmp_path / "platform" / "raydistill").mkdir(parents=True)

    shipped = workers_miss_checkout({**JOB_ENV, "PYTHONPATH": f"{tmp_path}:platform"}, cwd=tmp_path)
    not_shipped = workers_miss_checkout({**JOB_ENV, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    plain_run = workers_miss_checkout({"PYTHONPATH": ""}, cwd=tmp_path)

    assert (shipped, not_shipped, plain_run) == (False, True, False)


def test_job_entry_point_fails_exactly_like_the_cli():
    args = ["--config", "configs/digits.yaml", "--set", "distill.temperature=-1"]

    job = subprocess.run([sys.executable, "jobs/teacher.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    direct = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "teacher", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=120)

    assert job.returncode == direct.returncode == 2
    assert job.stderr == direct.stderr and "error: distill.temperature: must be > 0" in job.stderr
    assert "[raydistill job] stage=teacher exit=2" in job.stdout


@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_serve_job_promote_and_rollback_end_the_canary_instead_of_deploying(action, tmp_path, capsys):
    # Found by review: jobs/serve.py ignored the action and redeployed serve.artifact with the canary
    # still attached. Without serve.canary_artifact, ending a canary is refused before Ray is touched.
    rc = run_job("serve", [action, "--config", "configs/digits.yaml", "--set", f"run.storage_path={tmp_path}"], env={})
    assert rc == 2 and "error: serve.canary_artifact: name the canary the running application serves" in \
        capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("stage", ["teacher", "distill", "tune", "federated", "serve", "pipeline"])
def test_every_stage_has_a_job_with_the_clis_arguments(stage, capsys):
    script = (REPO / "jobs" / f"{stage}.py").read_text()
    cli.build_parser()  # registers the optional stages (tune, federated, serve) first
    before = dict(cli.STAGES)

    with pytest.raises(SystemExit) as exit_info:
        run_job(stage, ["--help"], env={})

    usage = capsys.readouterr().out
    assert f'main("{stage}")' in script and exit_info.value.code == 0
    assert f"usage: raydistill {stage}" in usage and "--config" in usage and "--set" in usage and "--address" in usage
    assert cli.STAGES == before  # the job's serve target does not leak into the CLI


# --- on a real head ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head():
    names = ("gcs", "dashboard", "client", "agent_http", "agent_grpc", "metrics", "runtime_env")
    running = start_head({name: free_port() for name in names})
    try:
        yield running
    finally:
        stop_head(running)
        assert not running.marked_processes(), "processes of the test cluster outlived stop_head"


def submit_cli(head: RayHead, entrypoint: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``ray job submit`` exactly as the README shows it (repo root, working dir + runtime env file)."""
    return head.ray_cli("job", "submit", "--address", head.address, "--working-dir", ".",
                        "--runtime-env", "jobs/runtime_env.yaml", "--", *entrypoint, timeout=timeout)


def submit_sdk(head: RayHead, args: list[str]) -> str:
    """``JobSubmissionClient.submit_job`` with the same runtime env; returns the job id."""
    runtime_env = {**RUNTIME_ENV, "working_dir": str(REPO)}
    return head.client().submit_job(entrypoint=shlex.join(["python", *args]), runtime_env=runtime_env)


def printed_path(logs: str, label: str) -> Path:
    """The path on the last ``<label>: <path>`` line (the pipeline's tune step prints its own first)."""
    found = re.findall(rf"^{label}: (\S+)", logs, re.M)
    assert found, f"no '{label}: <path>' line in the job logs:\n{logs[-3000:]}"
    return Path(found[-1])


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_job_driver_and_workers_import_the_submitted_checkout(head):
    result = submit_cli(head, ["python", "tests/_where_job.py"])

    assert result.returncode == 0, result.stdout + result.stderr
    driver = re.search(r"driver=(\S+)", result.stdout).group(1)
    worker = re.search(r"worker=(\S+)", result.stdout).group(1)
    for path in (driver, worker):  # the shipped copy, not the editable install in this repo
        assert SHIPPED in path and path.endswith("platform/raydistill/__init__.py"), path


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_bad_config_job_fails_with_the_config_error(head):
    client = head.client()

    job_id = submit_sdk(head, ["jobs/teacher.py", "--config", "configs/digits.yaml", "--set", "distill.temperature=-1"])

    assert wait_for_status(client, job_id, timeout=45) == "FAILED"
    assert "error: distill.temperature: must be > 0, got -1.0" in client.get_job_logs(job_id)


CIFAR100 = "configs/cifar100_resnet32x4_resnet8x4.yaml"
# the recipe unchanged but for the data (CIFAR-shaped synthetic images, 100 classes) and 2 epochs
# with its multistep decay at epoch 1 instead of 240 epochs with decays at 150/180/210; no student-alone
# run (the same Ray Train stage as the distilled student's, minus the teacher: the SDK job skips it too)
CIFAR_SMOKE = ["data.name=synthetic", "data.synthetic_shape=[3, 32, 32]", "data.synthetic_classes=100",
               "data.synthetic_samples=64", "run.quiet=true", "pipeline.serve=false",  # as the README submits it
               "pipeline.baseline=false",
               *(f"{stage}.{key}" for stage in ("teacher", "distill") for key in ("epochs=2", "milestones=[1]"))]


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_cifar100_recipe_runs_unchanged_as_a_pipeline_job_via_cli(head):
    started = time.monotonic()

    result = submit_cli(head, ["python", "jobs/pipeline.py", "--config", CIFAR100, *sets(CIFAR_SMOKE)])

    print(f"\nCIFAR-100 recipe pipeline job: submit -> done {time.monotonic() - started:.1f} s")
    assert result.returncode == 0 and "succeeded" in result.stdout, result.stdout + result.stderr
    storage = head.storage_root / "runs"  # the recipe's relative `runs`, under RAYDISTILL_STORAGE_ROOT
    student = printed_path(result.stdout, "chosen student")
    assert student.parent == storage / "artifacts" / "student" and resolve_artifact("chosen", storage) == student
    teacher = resolve_artifact("latest:teacher", storage)
    assert f"results under {storage}" in result.stdout
    # the published pair (CIFAR-100 heads: 7.43 M and 1.23 M parameters) and RepDistiller's settings
    (t_model, t_card), (s_model, s_card) = load_artifact(teacher), load_artifact(student)
    assert t_card["architecture"]["name"] == "resnet32x4" and s_card["architecture"]["name"] == "resnet8x4"
    t_params, s_params = (sum(p.numel() for p in m.parameters()) for m in (t_model, s_model))
    assert round(t_params / 1e6, 2) == 7.43 and round(s_params / 1e6, 2) == 1.23
    assert s_card["distillation"] == {"temperature": 4.0, "alpha": 0.1, "mode": "online", "method": "kd"}
    assert s_card["parents"][0]["path"] == str(teacher)
    for card in (t_card, s_card):
        assert {k: card["training"][k] for k in ("optimizer", "lr", "momentum", "weight_decay", "batch_size",
                                                  "scheduler", "gamma")} == {
            "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "batch_size": 64,
            "scheduler": "multistep", "gamma": 0.1}
        assert card["training"]["augment"] == {"translate": 4, "hflip": True, "cutout": 0, "mixup": 0.0,
                                               "mixup_alpha": 1.0}
        assert [h["lr"] for h in card["metrics"]["history"]] == pytest.approx([0.05, 0.005])  # x0.1 at the milestone
        assert len(card["class_names"]) == 100


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_pipeline_job_via_sdk_runs_end_to_end(head, tmp_path):
    storage = tmp_path / "runs"
    port = free_port()
    overrides = tiny_overrides(storage, epochs=2, workers=2) + [
        "tune.num_samples=2", "tune.max_epochs=2", "tune.grace_period=1", f"serve.port={port}",
        "pipeline.smoke_requests=5", "run.quiet=false",  # progress on, as a user's job has it
        "pipeline.baseline=false"]  # the demo test trains the student alone; here one Ray Train stage less
    client = head.client()
    started = time.monotonic()

    job_id = submit_sdk(head, ["jobs/pipeline.py", "--config", "configs/digits.yaml", *sets(overrides)])
    status = wait_for_status(client, job_id, timeout=270)

    print(f"\npipeline job: submit -> {status} {time.monotonic() - started:.1f} s")
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-4000:]
    chosen = printed_path(logs, "chosen student")
    assert resolve_artifact("chosen", storage) == chosen and load_artifact(chosen)[1]["kind"] == "student"
    for model in ("teacher", "distilled-student"):
        assert re.search(rf"^{model}\s+\S+\s+0\.\d{{4}}", logs, re.M), f"no summary row for {model}"
    assert not re.search(r"^student-alone\s", logs, re.M) and "[baseline] epoch" not in logs  # baseline=false
    assert re.search(r"^distillation: T=\S+ alpha=\S+ lr=\S+ from the sweep", logs, re.M), "no tuned T/alpha"
    smoke = re.search(rf"^endpoint: http://127\.0\.0\.1:{port}/v1/predict \(shut down\); 5 smoke requests, "
                      r"(\d+) correct, p50 [\d.]+ ms", logs, re.M)
    assert smoke and int(smoke.group(1)) >= 1, "the smoke requests got no (correct) prediction"
    assert f"results under {storage}" in logs
    # a job's log is not a terminal: plain progress lines (first and last epoch, each trial), no bars
    for line in (r"\[teacher\] epoch 1/2 train_loss=", r"\[teacher\] epoch 2/2 train_loss=", r"tune: trial 2/2 ",
                 r"\[student\] epoch 2/2 train_loss="):
        assert re.search(line, logs), f"no progress line {line!r} in the job's log"
    assert "\r" not in logs and "it/s]" not in logs  # tqdm's carriage returns and rates
    # the epoch lines pass Ray Train's JSON log handler (a Progress object in the record made it print a
    # "--- Logging error ---" traceback per line). Not "no Traceback at all": with the test session's own
    # Ray runtime on this host too, Ray Train's PlacementGroupCleaner thread dies on "Found multiple
    # active Ray instances" (Ray's address auto-detection; one Ray instance per node does not have it).
    assert "Logging error" not in logs and "is not JSON serializable" not in logs
    assert logs.count("[student] epoch 2/2 train_loss=") == 1  # rank 0's line once (not again by Ray Train's handler)
    assert "Reporting training result" not in logs  # Ray Train's per-report INFO lines need run.verbose


@pytest.mark.cluster
@pytest.mark.timeout(150)
def test_serve_job_deploys_and_exits_leaving_the_app_running(head, tmp_path):
    student = make_local_artifact(tmp_path / "runs", epochs=3)
    port = free_port()
    client = head.client()
    digit = [[[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0],
              [0, 4, 12, 0, 0, 8, 8, 0], [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0],
              [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]]  # sklearn digits[0], a zero

    job_id = submit_sdk(head, ["jobs/serve.py", "--config", "configs/digits.yaml", "--artifact", str(student),
                               "--set", f"run.storage_path={tmp_path / 'runs'}", "--set", f"serve.port={port}"])
    try:
        status = wait_for_status(client, job_id, timeout=120)
        logs = client.get_job_logs(job_id)
        assert status == "SUCCEEDED", logs[-4000:]
        url = re.search(r"serving \S+ at (\S+)", logs).group(1)
        reply = httpx.post(f"{url}v1/predict", json={"instances": [digit]}, timeout=30)
    finally:
        shutdown = head.ray_cli("serve", "shutdown", "--address", head.address, "-y", timeout=60)

    assert shutdown.returncode == 0, shutdown.stderr  # the app stayed up until we removed it
    assert url == f"http://127.0.0.1:{port}/"
    assert reply.status_code == 200, reply.text
    prediction = reply.json()["predictions"][0]
    assert prediction["label"] in range(10) and abs(sum(prediction["probabilities"]) - 1) < 1e-4


@pytest.mark.cluster
@pytest.mark.timeout(150)
def test_running_job_can_be_stopped_and_frees_its_workers(head, tmp_path):
    client = head.client()
    job_id = submit_sdk(head, ["jobs/teacher.py", "--config", "configs/digits.yaml", "--set", "teacher.epochs=1000",
                               "--set", f"run.storage_path={tmp_path / 'runs'}"])
    wait_for_log(client, job_id, "[teacher] epoch 1/1000", timeout=100)
    assert head.marked_processes("RayTrainWorker"), "training had not started"

    stopped = client.stop_job(job_id)
    status = wait_for_status(client, job_id, timeout=30)

    assert stopped and status == "STOPPED"
    deadline = time.monotonic() + 20
    while head.marked_processes("RayTrainWorker") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not head.marked_processes("RayTrainWorker"), "Ray Train workers outlived the stopped job"
    assert not list((tmp_path / "runs" / "artifacts").glob("teacher/*")), "a stopped job wrote an artifact"
