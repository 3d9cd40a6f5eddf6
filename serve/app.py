"""Ray Serve entry point for ``serve run serve/config.yaml`` and ``serve deploy serve/config.yaml``.

Thin on purpose: the deployment, validation and model code live in ``raydistill.serving``.
``app_builder(args)`` takes the ``args:`` block of the config (see ``ServeArgs`` for every field):

    serve run serve.app:app_builder artifact=runs/artifacts/student/<dir>   # or artifact=chosen
"""
from raydistill.serving.app import ServeArgs, app_builder, build_app

__all__ = ["ServeArgs", "app_builder", "build_app"]
