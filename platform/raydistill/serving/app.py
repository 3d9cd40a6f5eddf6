"""``app_builder(args) -> Application``: typed arguments in, a Ray Serve application out.

Used by ``serve run serve/config.yaml`` / ``serve deploy`` (through ``serve/app.py``), by
:func:`raydistill.serving.deploy` and by the CLI. The artifact is resolved and verified here, on
the caller's side, so a missing or tampered artifact refuses to deploy with a clear
:class:`~raydistill.core.artifacts.ArtifactError` before any replica starts; each replica verifies
it again when it loads it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raydistill.core.artifacts import ArtifactError, load_artifact
from raydistill.core.config import RunSection, ServeSection
from raydistill.core.config.schema import QUANTIZE_MODES
from raydistill.serving.fetch import is_remote_uri
from raydistill.serving.model_runner import locate_artifact


# What a replica's constructor receives. Batching travels in user_config and autoscaling in the
# deployment options, so changing those is a light update that does not restart replicas.
REPLICA_FIELDS = {"artifact", "storage_path", "max_instances", "max_body_bytes", "auth_token_env", "auth_token_file",
                  "quantize",
                  "allowed_hosts", "body_timeout_s"}


_S = ServeSection()  # the one home of the serving defaults


class ServeArgs(BaseModel):
    """Arguments of :func:`app_builder` (the ``args:`` block of ``serve/config.yaml``)."""

    model_config = ConfigDict(extra="forbid")

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
    look_back_period_s: float = Field(default=_S.look_back_period_s, gt=0, description="window the autoscaler averages over")
    max_ongoing_requests: int = Field(default=_S.max_ongoing_requests, ge=1)
    num_cpus: float = Field(default=_S.num_cpus, gt=0)

    @model_validator(mode="after")
    def _replica_range(self) -> "ServeArgs":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


def verified_artifact(args: ServeArgs) -> str:
    """The artifact reference replicas should load: an absolute local path (or the URI), verified.

    Raises
    ------
    ArtifactError
        missing, incomplete or tampered (sha256 mismatch) artifact.
    """
    path = locate_artifact(args.artifact, args.storage_path)
    try:
        load_artifact(path)
    except ArtifactError as exc:
        raise ArtifactError(f"refusing to deploy {args.artifact}: {exc}") from exc
    return args.artifact if is_remote_uri(args.artifact) else str(path)


def deployment_options(args: ServeArgs) -> dict[str, Any]:
    """Autoscaling, batching (``user_config``, changeable at run time) and per-replica resources."""
    # No runtime_env carrying the token: Ray shows deployment options to anyone who can read the
    # dashboard. Replicas read serve.auth_token_env / serve.auth_token_file where they run.
    actor_options: dict[str, Any] = {"num_cpus": args.num_cpus}
    return {
        "autoscaling_config": {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                               "target_ongoing_requests": args.target_ongoing_requests,
                               "upscale_delay_s": args.upscale_delay_s,
                               "downscale_delay_s": args.downscale_delay_s,
                               "look_back_period_s": args.look_back_period_s},
        "user_config": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s},
        "ray_actor_options": actor_options,
        "max_ongoing_requests": args.max_ongoing_requests,
    }


def build_app(args: ServeArgs):
    """The bound application: ``StudentDeployment`` around the verified artifact."""
    from raydistill.serving.deployment import StudentDeployment

    settings = args.model_dump(include=REPLICA_FIELDS)
    settings["artifact"] = verified_artifact(args)
    return StudentDeployment.options(**deployment_options(args)).bind(settings)


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files: ``import_path: serve.app:app_builder`` with ``args:``."""
    return build_app(ServeArgs.model_validate(args or {}))
