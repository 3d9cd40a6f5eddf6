"""Config: typed, validated at the door, errors name the dotted key (no Ray)."""
import subprocess
import sys

import pytest

from raydistill.core.config import ConfigError, config_from_dict, load_config

from conftest import REPO

DIGITS = REPO / "configs" / "digits.yaml"


def test_default_config_loads_with_documented_values():
    cfg = load_config(DIGITS)
    assert cfg.data.name == "digits"
    assert cfg.distill.workers == "auto" and cfg.distill.batch_size == 128
    assert cfg.teacher.model.args["hidden"] == [1200, 1200]


def test_override_parses_yaml_values_and_keeps_siblings():
    cfg = load_config(DIGITS, ["distill.temperature=8", "teacher.model.args={hidden: [16]}", "run.quiet=true"])
    assert cfg.distill.temperature == 8.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.teacher.model.args == {"hidden": [16]}
    assert cfg.teacher.model.name == "mlp"
    assert cfg.distill.alpha == load_config(DIGITS).distill.alpha  # sibling untouched


def test_a_model_named_without_args_does_not_inherit_the_default_models_args(tmp_path):
    # the default teacher is an MLP with hidden/dropout; a ResNet named in a file or an override
    # must get its own defaults, not those keywords (build_model would refuse them)
    path = tmp_path / "r.yaml"
    path.write_text("teacher:\n  model: {name: resnet32x4}\ndistill:\n  student: {name: resnet8x4}\n")
    cfg = load_config(path)
    assert cfg.teacher.model.args == {} and cfg.distill.student.args == {}
    assert load_config(None, ["teacher.model.name=cnn"]).teacher.model.args == {}
    # the same name keeps the default's args; explicit args replace them whole
    assert load_config(None, ["teacher.model.name=mlp"]).teacher.model.args == {"hidden": [1200, 1200], "dropout": 0.5}
    assert load_config(None, ["teacher.model={name: cnn, args: {fc: 8}}"]).teacher.model.args == {"fc": 8}


def test_a_number_where_a_name_is_expected_is_read_as_that_name():
    cfg = load_config(None, ["distill.hint_layer=12", "distill.guided_layer=4", "run.name=2026"])
    assert (cfg.distill.hint_layer, cfg.distill.guided_layer, cfg.run.name) == ("12", "4", "2026")
    with pytest.raises(ConfigError, match="run.name: expected a string, got True"):
        load_config(None, ["run.name=true"])


@pytest.mark.parametrize("override, key", [
    ("distill.temprature=4", "distill.temprature"),
    ("distil.temperature=4", "distil"),
    ("distill.temperature=hot", "distill.temperature"),
    ("distill.temperature=0", "distill.temperature"),
    ("distill.temperature=-1", "distill.temperature"),
    ("distill.alpha=1.5", "distill.alpha"),
    ("distill.alpha=-0.1", "distill.alpha"),
    ("distill.workers=0", "distill.workers"),
    ("teacher.workers=1.5", "teacher.workers"),
    ("distill.mode=sometimes", "distill.mode"),
    ("data.val_fraction=1.2", "data.val_fraction"),
    ("run.use_gpu=maybe", "run.use_gpu"),
    ("run.storage_path=s3://bucket/runs", "run.storage_path"),
    ("serve.ingress=nginx", "serve.ingress"),
    ("run.tracking=maybe", "run.tracking"),
    ("run.tracking_uri=/tmp/mlruns", "run.tracking_uri"),
    ("distill.method=crd", "distill.method"),
    ("serve.auth_token_env=T serve.auth_token_file=/run/secrets/token", "serve.auth_token_file"),
    ("distill.method=kd+dkd", "distill.method"),
    ("distill.dkd_alpha=-1", "distill.dkd_alpha"),
    ("distill.dkd_beta=.nan", "distill.dkd_beta"),
    ("distill.dkd_warmup_epochs=-2", "distill.dkd_warmup_epochs"),
    ("distill.dkd_warmup_epochs=2.5", "distill.dkd_warmup_epochs"),
    ("distill.method=dkd distill.dkd_alpha=0 distill.dkd_beta=0", "distill.dkd_beta"),
    ("distill.dist_gamma=-0.5", "distill.dist_gamma"),
    ("distill.dist_beta=.inf", "distill.dist_beta"),
    ("distill.method=dist distill.dist_beta=0 distill.dist_gamma=0", "distill.dist_gamma"),
    ("federated.method=fitnet", "federated.method"),  # no teacher features in a federation
    ("federated.method=dkd", "federated.method"),  # neither client KD nor FedDF: it would not be used
    ("federated.strategy=feddf federated.method=dist distill.dist_beta=0 distill.dist_gamma=0", "distill.dist_gamma"),
    ("tune.method=[kd,dkd] distill.dkd_alpha=0 distill.dkd_beta=0", "distill.dkd_beta"),
    # found by review: each was a traceback (an overflow in float() or in torch's generator) or accepted
    ("run.seed=1000000000000000", "run.seed"),
    ("run.seed=4294967296", "run.seed"),
    ("teacher.seeds=[3,-1]", "teacher.seeds[1]"),
    ("distill.temperature=1" + "0" * 400, "distill.temperature"),
    ("distill.epochs=1" + "0" * 30, "distill.epochs"),
    ("compress.sparsities=[0.501,0.499]", "compress.sparsities"),  # both rows were teacher-pruned50, one file
    ("compress.sparsities=[0.001]", "compress.sparsities"),  # teacher-pruned0
    ("distill.temperature=1e4", "distill.temperature"),  # found by review: a negative float32 KD loss
    ("tune.temperature=[1,1000]", "tune.temperature"),
    ("federated.distill_temperature=500", "federated.distill_temperature"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(DIGITS, override.split(" "))
    assert key in str(err.value)


def test_unknown_key_in_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  temperatur: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'distill\.temperatur'"):
        load_config(bad)


def test_yaml_tags_that_import_code_are_refused(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_largest_seed_is_accepted_and_a_config_that_is_not_utf8_is_named(tmp_path):
    assert load_config(DIGITS, ["run.seed=4294967295"]).run.seed == 2**32 - 1
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"run:\n  name: caf\xe9\n")  # 'café' saved as Latin-1 (found by review: a traceback)
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 16\)"):
        load_config(latin1)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_through_dict_is_identity():
    cfg = load_config(DIGITS, ["distill.temperature=2.5"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_cli_reports_config_error_before_starting_ray():
    # Execute: the real console entry point, as a user would run it.
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "distill", "--config", str(DIGITS),
                           "--set", "distill.alpha=2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "distill.alpha" in proc.stderr and "[0, 1]" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("stage", ["distill", "tune"])
def test_a_missing_teacher_is_named_before_ray_starts(stage, tmp_path):
    # Found by review: distill (2 workers: a Ray stage) and tune resolved the teacher after starting Ray.
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", stage, "--config", str(DIGITS),
                           "--set", f"distill.teacher={tmp_path / 'nope'}", "--set", "distill.workers=2",
                           "--set", f"run.storage_path={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"not an artifact: {tmp_path / 'nope' / 'model.json'} is missing" in proc.stderr
    assert "Ray" not in proc.stderr + proc.stdout and not (tmp_path / "ray_results").exists()


def test_tune_resume_of_a_sweep_without_tune_state_is_refused_before_ray_starts(tmp_path):
    # Found by review: a sweep dir that died before Tune saved anything (soft targets) started Ray first.
    from raydistill.core.config import save_config

    (tmp_path / "sweep").mkdir()
    save_config(load_config(DIGITS, [f"run.storage_path={tmp_path}"]), tmp_path / "sweep" / "sweep.yaml")
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "tune", "--resume", str(tmp_path / "sweep")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"--resume: {tmp_path / 'sweep'} holds no Tune state to restore" in proc.stderr
    assert "Ray" not in proc.stderr + proc.stdout


def test_cli_unknown_model_is_a_config_error_naming_the_key():
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli.commands", "teacher", "--config", str(DIGITS),
                           "--set", "teacher.model.name=resnet18x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "teacher.model.name" in proc.stderr and "unknown model 'resnet18x'" in proc.stderr
    assert "mlp" in proc.stderr  # the known names are listed


def test_serve_config_yaml_repeats_the_schema_defaults():
    """serve/config.yaml is what `serve run` reads; every value it sets must be the serve section's default
    (the schema is the one home of defaults), so the two ways to deploy cannot drift apart."""
    import yaml

    from raydistill.core.config import Config, RunSection

    # Prepare: the YAML app and the schema's defaults, read independently.
    app = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]
    deployment = app["deployments"][0]
    schema = Config().serve
    # Execute: gather every (key, value) the YAML sets, wherever it sets it.
    pairs = {**app["args"], **deployment["autoscaling_config"], **deployment["user_config"],
             "max_ongoing_requests": deployment["max_ongoing_requests"],
             "num_cpus": deployment["ray_actor_options"]["num_cpus"]}
    # Assert
    assert pairs.pop("storage_path") == RunSection().storage_path
    assert {k: v for k, v in pairs.items()} == {k: getattr(schema, k) for k in pairs}
    assert app["name"] == schema.app_name and app["route_prefix"] == schema.route_prefix
    http = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["http_options"]
    assert (http["host"], http["port"], http["request_timeout_s"]) == (schema.host, schema.port, schema.request_timeout_s)


@pytest.mark.parametrize("sets, error_key", [
    (["serve.host=0.0.0.0"], "serve.host"),
    (["serve.host=10.0.0.5"], "serve.host"),
    (["serve.host=0.0.0.0", "serve.auth_token_env=RAYDISTILL_TOKEN"], None),
    (["serve.host=0.0.0.0", "serve.allow_unauthenticated_public=true"], None),
    (["serve.host=localhost"], None),
    (["serve.allowed_hosts=[]"], "serve.allowed_hosts"),
])
def test_public_bind_without_auth_is_refused_unless_asked_for(sets, error_key):
    from raydistill.core.config import ConfigError, load_config

    if error_key is None:
        load_config(str(DIGITS), sets)
        return
    with pytest.raises(ConfigError, match=error_key.replace(".", r"\.")) as info:
        load_config(str(DIGITS), sets)
    if error_key == "serve.host":
        assert "serve.auth_token_env" in str(info.value) and "allow_unauthenticated_public" in str(info.value)


@pytest.mark.parametrize("uri, ok", [
    ("", True), ("http://mlflow.example:5000", True), ("https://mlflow.example", True),
    ("sqlite:////shared/runs/mlflow.db", True), ("postgresql://user@db/mlflow", True), ("databricks", True),
    ("mlruns", False), ("/shared/mlruns", False), ("http://mlflow.example:5000 ", False), ("sqlite:///a b.db", False),
])
def test_tracking_uri_is_empty_or_a_uri_with_a_scheme(uri, ok):
    from raydistill.core.config import Config, validate

    cfg = Config()
    cfg.run.tracking_uri = uri
    if ok:
        validate(cfg)
        return
    with pytest.raises(ConfigError, match=r"run\.tracking_uri") as info:
        validate(cfg)
    assert "sqlite:///" in str(info.value) and repr(uri) in str(info.value)
