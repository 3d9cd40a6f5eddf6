"""``app_builder(args) -> Application``: typed arguments in, a Ray Serve application out.

Used by ``serve run serve/config.yaml`` / ``serve deploy`` (through ``serve/app.py``), by
:func:`raydistill.serving.deploy` and by the CLI. The artifact is resolved and verified here, on
the caller's side, so a missing or tampered artifact refuses to deploy with a clear
:class:`~raydistill.core.artifacts.ArtifactError` before any replica starts; each replica verifies
it again when it loads it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raydistill.core.artifacts import ArtifactError
from raydistill.core.config import RunSection, ServeSection
from raydistill.core.config.schema import QUANTIZE_MODES, SERVE_METRICS_INTERVAL_S
from raydistill.serving.canary import CanarySettings
from raydistill.serving.cascade import CASCADE_METRICS, CascadeSettings, check_pair
from raydistill.serving.fetch import is_remote_uri
from raydistill.serving.model_runner import load_servable, locate_artifact


# What a replica's constructor receives. Batching travels in user_config and autoscaling in the
# deployment options, so changing those is a light update that does not restart replicas.
REPLICA_FIELDS = {"artifact", "storage_path", "max_instances", "max_body_bytes", "auth_token_env", "auth_token_file",
                  "quantize",
                  "allowed_hosts", "body_timeout_s"}


_S = ServeSection()  # the one home of the serving defaults


class ServeArgs(BaseModel):
    """Arguments of :func:`app_builder` (the ``args:`` block of ``serve/config.yaml``). Every number
    must be finite (``body_timeout_s: .inf`` would turn off the slow-client 408), as in the ``serve:``
    config section."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    artifact: str = Field(default=_S.artifact, description="artifact dir, 'chosen', 'latest:<kind>' or a URI "
                                                          "(s3://, gs://, file://)")
    storage_path: str = Field(default=RunSection().storage_path, description="where 'chosen'/'latest:' are looked up")
    max_batch_size: int = Field(default=_S.max_batch_size, ge=1, description="requests per forward pass; 1 = batching off")
    batch_wait_timeout_s: float = Field(default=_S.batch_wait_timeout_s, ge=0)
    max_instances: int = Field(default=_S.max_instances, ge=1, description="instances per request")
    max_body_bytes: int = Field(default=_S.max_body_bytes, ge=1)
    body_timeout_s: float = Field(default=_S.body_timeout_s, gt=0,
                                  description="seconds to receive the whole body; slower clients get 408")
    auth_token_env: str = Field(default=_S.auth_token_env, description="env var holding the bearer token where the "
                                                                      "replicas run; '' = auth off")
    auth_token_file: str = Field(default=_S.auth_token_file, description="absolute path (on every node) of a file "
                                                                        "holding the bearer token, mode 0600")
    allowed_hosts: list[str] = Field(default_factory=lambda: list(_S.allowed_hosts), min_length=1,
                                     description="Host header values answered; others get 400; '*' = any")
    quantize: Literal[QUANTIZE_MODES] = _S.quantize
    min_replicas: int = Field(default=_S.min_replicas, ge=1)
    max_replicas: int = Field(default=_S.max_replicas, ge=1)
    target_ongoing_requests: float = Field(default=_S.target_ongoing_requests, gt=0)
    upscale_delay_s: float = Field(default=_S.upscale_delay_s, ge=0)
    downscale_delay_s: float = Field(default=_S.downscale_delay_s, ge=0)
    look_back_period_s: float = Field(default=_S.look_back_period_s, gt=SERVE_METRICS_INTERVAL_S,
                                      description="window the autoscaler averages over; longer than Serve's "
                                                  f"{SERVE_METRICS_INTERVAL_S:g} s metrics interval")
    max_ongoing_requests: int = Field(default=_S.max_ongoing_requests, ge=1)
    num_cpus: float = Field(default=_S.num_cpus, gt=0)
    cascade_teacher: str = Field(default=_S.cascade_teacher, description="teacher artifact answering the instances "
                                 "the student is unsure of; '' = no cascade")
    cascade_threshold: float = Field(default=_S.cascade_threshold, ge=0)
    cascade_metric: Literal[CASCADE_METRICS] = _S.cascade_metric
    cascade_timeout_s: float = Field(default=_S.cascade_timeout_s, gt=0)
    cascade_min_replicas: int = Field(default=_S.cascade_min_replicas, ge=0)
    cascade_max_replicas: int = Field(default=_S.cascade_max_replicas, ge=1)
    canary_artifact: str = Field(default=_S.canary_artifact, description="a second student version answering "
                                 "canary_fraction of requests (by X-Request-Key); '' = no canary")
    canary_fraction: float = Field(default=_S.canary_fraction, ge=0, le=1)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        if not all(h.strip() for h in hosts):
            raise ValueError(f"must be host names (or [\"*\"]), got an empty one in {hosts}")
        return hosts

    @model_validator(mode="after")
    def _replica_range(self) -> "ServeArgs":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.cascade_max_replicas < self.cascade_min_replicas:
            raise ValueError(f"cascade_max_replicas ({self.cascade_max_replicas}) must be >= cascade_min_replicas "
                             f"({self.cascade_min_replicas})")
        return self


def verified_artifact(args: ServeArgs, ref: str | None = None) -> tuple[str, dict]:
    """The artifact reference replicas should load (an absolute local path, or the URI), verified,
    and its card; ``ref`` defaults to ``args.artifact``.

    Raises
    ------
    ArtifactError
        missing, incomplete or tampered (sha256 mismatch) artifact.
    """
    ref = args.artifact if ref is None else ref
    path = locate_artifact(ref, args.storage_path)
    try:
        _, card = load_servable(path)
    except ArtifactError as exc:
        raise ArtifactError(f"refusing to deploy {ref}: {exc}") from exc
    return (ref if is_remote_uri(ref) else str(path)), card


def deployment_options(args: ServeArgs, *, teacher: bool = False) -> dict[str, Any]:
    """Autoscaling, batching (``user_config``, changeable at run time, with the cascade's knobs when
    there is a cascade) and per-replica resources; ``teacher``: the cascade teacher's own replica range."""
    # No runtime_env carrying the token: Ray shows deployment options to anyone who can read the
    # dashboard. Replicas read serve.auth_token_env / serve.auth_token_file where they run.
    actor_options: dict[str, Any] = {"num_cpus": args.num_cpus}
    user_config: dict[str, Any] = {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s}
    if args.cascade_teacher and not teacher:
        user_config.update(args.model_dump(include=set(CascadeSettings.model_fields)))
    if args.canary_artifact and not teacher:
        user_config.update(args.model_dump(include=set(CanarySettings.model_fields)))
    replicas = (args.cascade_min_replicas, args.cascade_max_replicas) if teacher else (args.min_replicas, args.max_replicas)
    return {
        "autoscaling_config": {"min_replicas": replicas[0], "max_replicas": replicas[1],
                               "target_ongoing_requests": args.target_ongoing_requests,
                               "upscale_delay_s": args.upscale_delay_s,
                               "downscale_delay_s": args.downscale_delay_s,
                               "look_back_period_s": args.look_back_period_s},
        "user_config": user_config,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": args.max_ongoing_requests,
    }


def build_app(args: ServeArgs):
    """The bound application: ``StudentDeployment`` around the verified artifact; with
    ``cascade_teacher``, a ``TeacherDeployment`` (its own autoscaling) bound as its handle, and with
    ``canary_artifact`` a ``CanaryDeployment`` (the student's replica settings), after checking each
    answers the student's requests (serving/cascade.py)."""
    from raydistill.serving.deployment import ModelDeployment, StudentDeployment

    settings = args.model_dump(include=REPLICA_FIELDS)
    settings["artifact"], card = verified_artifact(args)
    handles = {}
    for key, name, role, teacher in (("cascade_teacher", "TeacherDeployment", "teacher", True),
                                     ("canary_artifact", "CanaryDeployment", "canary", False)):
        ref = getattr(args, key)
        if not ref:
            continue
        resolved, other = verified_artifact(args, ref)
        check_pair(card, other, student=args.artifact, other=ref, role=role, key=f"serve.{key}")
        options = deployment_options(args, teacher=True) if teacher else deployment_options(
            args.model_copy(update={"cascade_teacher": "", "canary_artifact": ""}))
        handles[role] = ModelDeployment.options(name=name, **options).bind(
            {"artifact": resolved, "storage_path": args.storage_path, "quantize": "none" if teacher else args.quantize})
    return StudentDeployment.options(**deployment_options(args)).bind(settings, handles.get("teacher"),
                                                                    handles.get("canary"))


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files: ``import_path: serve.app:app_builder`` with ``args:``."""
    return build_app(ServeArgs.model_validate(args or {}))
