"""Serving a student over HTTP with Ray Serve.

Ray-free pieces: :mod:`.validation` (request checks), :mod:`.model_runner` (verified artifact,
normalization, softmax, INT8), :mod:`.service` (auth, limits, responses), :mod:`.bare` (the same
endpoints on plain FastAPI). Ray pieces: :mod:`.deployment` (the Serve deployment), :mod:`.app`
(``app_builder``), :mod:`.cli` (``deploy`` and ``raydistill serve``). Importing this package does
not import Ray.
"""
from .cli import deploy, run_serve_cli, serve_args

__all__ = ["deploy", "run_serve_cli", "serve_args"]
