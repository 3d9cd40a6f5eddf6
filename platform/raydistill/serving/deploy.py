"""``raydistill serve`` and :func:`deploy`: start Serve on loopback, deploy the student, print the URL.

``deploy(cfg, ref)`` returns at once and leaves the application running (jobs, the pipeline);
``deploy(cfg, ref, blocking=True)`` — what the CLI runs — waits for SIGINT/SIGTERM and then removes
what it started: the app, Serve if it was not running before, Ray if it started it.
"""
from __future__ import annotations

import logging

import os
import signal
import threading
from pathlib import Path
from typing import Any

from raydistill.core.artifacts import load_card
from raydistill.core.config import Config
from raydistill.runtime import init_ray
from raydistill.serving.app import ServeArgs, build_app
from raydistill.serving.ingress import active_ingress, enable_ingress

logger = logging.getLogger(__name__)


def serve_args(cfg: Config, artifact_ref: str | None = None) -> ServeArgs:
    """``ServeArgs`` from the ``serve`` config section (and ``run.storage_path``)."""
    s = cfg.serve
    same_name = {k: getattr(s, k) for k in ServeArgs.model_fields if k not in ("artifact", "storage_path")}
    if s.host not in ("0.0.0.0", "::") and s.host.lower() not in same_name["allowed_hosts"]:
        same_name["allowed_hosts"] = [*same_name["allowed_hosts"], s.host.lower()]  # the bound name is always served
    if same_name["auth_token_file"]:  # replicas run elsewhere (another cwd, another node): an absolute path
        same_name["auth_token_file"] = str(Path(same_name["auth_token_file"]).expanduser().resolve())
    return ServeArgs(artifact=artifact_ref or s.artifact, storage_path=str(cfg.storage_dir()), **same_name)


def serve_is_running() -> bool:
    """True when a Serve controller already runs on the connected cluster."""
    from ray import serve

    status = serve.status()  # an empty status when Serve has not started
    return bool(status.proxies or status.applications)


def proxy_url(host: str, port: int, route_prefix: str) -> str:
    """``http://host:port/prefix/`` of the running proxy (its own settings win if it ran before us)."""
    try:  # Serve keeps the HTTP options of the first start; report the ones actually in use
        from ray.serve.context import _get_global_client

        http = _get_global_client().get_serve_details().get("http_options") or {}
        host, port = http.get("host") or host, http.get("port") or port
    except Exception:  # pragma: no cover - private API moved: fall back to what we asked for
        pass
    prefix = route_prefix.rstrip("/")
    return f"http://{host}:{port}{prefix}/"


def deploy(cfg: Config, artifact_ref: str | None = None, *, blocking: bool = False) -> str:
    """Deploy ``artifact_ref`` (dir, ``chosen``, ``latest:<kind>``, URI; default ``serve.artifact``).

    Returns the base URL. Raises ``ArtifactError`` before starting anything if the artifact is
    missing or tampered with. Redeploying under the same ``serve.app_name`` is a rolling update.
    With ``blocking=True`` it serves until SIGINT/SIGTERM (also one received while deploying),
    then removes what it started.
    """
    import ray

    app = build_app(serve_args(cfg, artifact_ref))  # verifies the artifact first
    started_ray = not ray.is_initialized()
    prepare_ingress(cfg)
    init_ray(cfg.run.address, quiet=cfg.run.quiet)  # before our handlers: ray.init installs its own
    if not blocking:
        return _start_and_run(cfg, app)
    with StopSignals() as signals:
        serve_was_running = serve_is_running()
        try:
            url = _start_and_run(cfg, app)
            _print_banner(cfg, artifact_ref, url)
            signals.wait()
        finally:
            stop(cfg.serve.app_name, shutdown_serve=not serve_was_running, shutdown_ray=started_ray)
    return url


def prepare_ingress(cfg: Config) -> str:
    """Select ``serve.ingress`` when this process is about to start a local Ray; the ingress in use.

    The flags are read by Ray's processes at start-up, so an attached cluster keeps its own
    (set them on ``ray start``); a mismatch is reported, not silently ignored.
    """
    import ray

    wanted = cfg.serve.ingress
    if not ray.is_initialized() and not (cfg.run.address or os.environ.get("RAY_ADDRESS")):
        enable_ingress(wanted)
    active = active_ingress()
    if active != wanted:
        logger.warning(f"serve.ingress={wanted} is not in effect (Ray was already running or is remote; start it with "
              f"the flags in raydistill.serving.ingress.INGRESS_FLAGS['{wanted}']); using {active}")
    return active


def _start_and_run(cfg: Config, app) -> str:
    """Start Serve on ``serve.host:port`` (or join the running one) and deploy ``app`` on the
    running Ray; the URL."""
    from ray import serve

    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s},
                logging_config={"enable_access_log": False, "log_level": "INFO" if cfg.run.verbose else "WARNING"})
    serve.run(app, name=s.app_name, route_prefix=s.route_prefix)
    return proxy_url(s.host, s.port, s.route_prefix)


def _print_banner(cfg: Config, artifact_ref: str | None, url: str) -> None:
    args = serve_args(cfg, artifact_ref)
    card: dict[str, Any] = {}
    if "://" not in args.artifact:
        from raydistill.core.artifacts import resolve_artifact

        card = load_card(resolve_artifact(args.artifact, args.storage_path))
    logger.info(f"serving {card.get('name', args.artifact)} ({Path(card.get('path', args.artifact)).name}, "
          f"sha256 {card.get('weights_sha256', '?')[:12]}, quantize={args.quantize})\n"
          f"  POST {url}v1/predict   GET {url}v1/model   GET {url}healthz   docs: {url}docs\n"
          "Ctrl-C to stop")


class StopSignals:
    """While entered, SIGINT and SIGTERM only set a flag (no KeyboardInterrupt, no Ray exit
    handler mid-deploy); :meth:`wait` blocks until one arrived. Previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.received.append(signum)
        self._event.set()

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def wait(self, poll_s: float = 0.5) -> int:
        """Block until a signal arrived (polling, so the main thread stays interruptible)."""
        while not self._event.wait(poll_s):
            pass
        return self.received[0]


def stop(app_name: str, *, shutdown_serve: bool, shutdown_ray: bool) -> None:
    """Remove our application; shut Serve and Ray down too when this process started them.

    When this process started a local runtime and both go, the app is deleted (its replicas drain
    their requests) and ``ray.shutdown()`` takes Serve's controller and proxies with the runtime:
    ``serve.shutdown()`` would make the controller kill itself inside its own ``graceful_shutdown``
    call, which the raylet reports as a failed task on a run that went fine. On an attached cluster
    ``serve.shutdown()`` is the only way Serve goes (``ray.shutdown()`` just disconnects)."""
    import ray
    from ray import serve

    from raydistill.runtime import started_local_runtime

    if shutdown_serve and not (shutdown_ray and started_local_runtime()):
        serve.shutdown()
    else:
        serve.delete(app_name)
    if shutdown_ray:
        ray.shutdown()
    logger.info(f"stopped {app_name}")


def run_serve_cli(cfg: Config, args=None) -> str:
    """``raydistill serve --config ... --artifact <dir|chosen|latest:kind|URI>``: blocks until Ctrl-C;
    ``raydistill serve promote|rollback``: ends a canary on the running application (:func:`end_canary`)."""
    ref = getattr(args, "artifact", "") or cfg.serve.artifact
    action = getattr(args, "action", "run") or "run"
    if action != "run":
        return end_canary(cfg, ref, promote=action == "promote")
    return deploy(cfg, ref, blocking=True)


def end_canary(cfg: Config, primary: str, *, promote: bool) -> str:
    """Redeploy ``serve.app_name`` without its canary: ``promote`` serves ``serve.canary_artifact`` as
    the primary, else (rollback) ``primary`` stays. A rolling update of the running application
    (Serve starts new replicas before it stops old ones; requests the canary cannot take any more
    are answered by the primary), on the cluster at ``run.address`` / ``RAY_ADDRESS`` / this machine's."""
    import dataclasses

    import ray
    from ray import serve

    from raydistill.core.config import ConfigError

    s = cfg.serve
    if not s.canary_artifact:
        raise ConfigError("serve.canary_artifact: name the canary the running application serves (the value it was "
                          "deployed with); promote serves it as the primary, rollback drops it")
    new = dataclasses.replace(cfg, serve=dataclasses.replace(s, artifact=s.canary_artifact if promote else primary,
                                                             canary_artifact=""))
    app = build_app(serve_args(new))  # verifies the artifact before touching the running app
    if not ray.is_initialized():
        address = cfg.run.address or os.environ.get("RAY_ADDRESS") or "auto"
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:  # nothing to promote on: never start a cluster for it
            raise ConfigError(f"run.address: no running Ray cluster at {address!r} to find {s.app_name!r} on "
                              f"({str(exc).splitlines()[0][:160]}); pass --address of the cluster serving it") from None
    if s.app_name not in serve.status().applications:
        raise ConfigError(f"serve.app_name: no application {s.app_name!r} is running on this cluster; deploy it with "
                          "`raydistill serve` (with serve.canary_artifact) first")
    url = _start_and_run(new, app)
    what = f"promoted {s.canary_artifact} to primary" if promote else f"rolled back to {primary}"
    logger.info(f"{s.app_name}: {what}; canary removed (rolling update) at {url}")
    return url
