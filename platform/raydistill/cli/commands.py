"""``raydistill <stage>``: one subcommand per stage, all taking ``--config``, ``--set``, ``--address``.

Config and input errors are reported before Ray starts, as ``error: <dotted key>: ...`` and
exit code 2.
"""
from __future__ import annotations

import logging

import argparse
import sys
from typing import Callable

from raydistill.core.artifacts import ArtifactError
from raydistill.core.config import Config, ConfigError, load_config
from raydistill.core.data import DataError
from raydistill.core.registry import UnknownNameError

STAGES: dict[str, tuple[str, str]] = {
    # stage: (module:function, help)
    "teacher": ("raydistill.cli.stages:run_teacher", "train the teacher with Ray Train"),
    "distill": ("raydistill.cli.stages:run_distill", "distill the student with Ray Train (N workers)"),
    "baseline": ("raydistill.cli.stages:run_baseline", "train the student alone (no teacher), the baseline"),
    "pipeline": ("raydistill.cli.pipeline:run_pipeline", "teacher -> distill -> baseline, with a summary table"),
}

logger = logging.getLogger(__name__)


def register_stage(name: str, target: str, help_text: str) -> None:
    """Add a subcommand whose entry point is ``target`` = ``"module:function(cfg, args)"``."""
    STAGES[name] = (target, help_text)


def _load_optional_stages() -> None:
    """Stages that live in their own modules announce themselves here (explicit, no side effects)."""
    optional = {
        "tune": ("raydistill.tuning.sweep:run_tune_cli", "sweep temperature x alpha with Ray Tune (ASHA)"),
        "federated": ("raydistill.federated:run_federated_cli", "federated clients on Ray actors"),
        "serve": ("raydistill.serving.deploy:run_serve_cli", "serve a student over HTTP with Ray Serve"),
        "compress-report": ("raydistill.compress.report:run_compress_cli", "distillation vs quantization vs pruning"),
        "cascade-report": ("raydistill.serving.cascade_report:run_cascade_report_cli",
                           "the student with its teacher behind it: accuracy vs escalation vs latency over HTTP"),
    }
    import importlib.util

    for name, (target, help_text) in optional.items():
        if importlib.util.find_spec(target.split(":")[0]) is not None and name not in STAGES:
            register_stage(name, target, help_text)


RESUME_HELP = {
    "tune": "resume the sweep in this directory (finished trials are not rerun)",
    "federated": "go on with the federated run in this directory from its last finished round",
    "teacher": "go on with this Ray Train run (<storage>/ray_results/<run>) from its last checkpoint",
    "distill": "go on with this Ray Train run (<storage>/ray_results/<run>) from its last checkpoint",
    "baseline": "go on with this Ray Train run (<storage>/ray_results/<run>) from its last checkpoint",
}  # a resumed run keeps its own saved config: only run.address / run.quiet / run.verbose come from this call


def build_parser() -> argparse.ArgumentParser:
    _load_optional_stages()
    parser = argparse.ArgumentParser(prog="raydistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        add_common_arguments(p)
        if name in RESUME_HELP:
            p.add_argument("--resume", default="", metavar="DIR", help=RESUME_HELP[name])
        if name == "serve":
            p.add_argument("action", nargs="?", default="run", choices=("run", "promote", "rollback"),
                           help="run (default): deploy and serve until Ctrl-C; promote: make serve.canary_artifact the "
                                "primary of the running app; rollback: drop the canary (both rolling updates)")
        if name in ("serve", "compress-report", "cascade-report"):
            p.add_argument("--artifact", default="", help="artifact dir, 'chosen' or 'latest:<kind>'")
        if name == "cascade-report":
            p.add_argument("--thresholds", type=float, nargs="+", default=None,
                           help="confidence thresholds to measure (default 0 .5 .7 .8 .9 .95 .99 .999; 0 = the student alone)")
            p.add_argument("--target-accuracy", type=float, default=None,
                           help="accuracy in [0, 1] the recommended threshold must reach (default: the teacher's, less 0.002)")
            p.add_argument("--latency-requests", type=int, default=200,
                           help="sequential one-instance requests timed per row")
            p.add_argument("--split", choices=("test", "val"), default="test",
                           help="examples to measure on: test (default), or val to choose a threshold without the test split")
    return parser


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML recipe (e.g. configs/digits.yaml); keys it leaves out keep the schema's defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set distill.temperature=4 (repeatable)")
    p.add_argument("--address", default="", help="Ray address to attach to (default: RAY_ADDRESS or local)")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's, Serve's and MLflow's own INFO logs (same as --set run.verbose=true)")


def _resolve(target: str) -> Callable:
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"run.address={args.address}")
    if getattr(args, "verbose", False):
        overrides.append("run.verbose=true")
    return load_config(args.config, overrides)


# A user's mistake (a bad config value, data, artifact or registry name): "error: ...", exit code 2, no traceback.
USER_ERRORS = (ConfigError, DataError, ArtifactError, UnknownNameError)


def run_script(script: Callable[[], object]) -> int:
    """A benchmark or tool script's exit code: ``script()``'s int result (0 otherwise), or 2 with
    ``error: <message>`` on stderr when it raises one of ``USER_ERRORS`` (a bad ``--config``/``--set``,
    a missing data root, a damaged artifact, an unknown data set or model name), as ``raydistill
    <stage>`` does. Bugs still raise."""
    try:
        result = script()
    except USER_ERRORS as exc:
        from raydistill.cli.console import attach_console

        attach_console()  # only now: a script's own output stays as it was
        logger.error(f"error: {exc}")
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: list[str] | None = None) -> int:
    from raydistill.cli.console import attach_console, quiet_libraries

    attach_console()  # the library logs; the CLI decides where lines go
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        quiet_libraries(cfg.run.verbose)
        result = _resolve(STAGES[args.stage][0])(cfg, args)
    except USER_ERRORS as exc:
        logger.error(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    return 0 if result is None or result is True or not isinstance(result, int) else int(result)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
