"""serving: the chosen student behind Ray Serve over HTTP.

Ray-free: ``validation`` (request checks), ``model_runner`` (verified artifact, normalization, softmax,
INT8), ``service`` (auth, limits, responses), ``bare`` (the same endpoints on plain FastAPI),
``cascade`` (which instances the teacher answers), ``canary`` (which requests a canary answers),
``cascade_report`` (imports Ray only when it runs).
Ray edge: ``deployment`` (the Serve deployments), ``app`` (``app_builder``), ``ingress``, ``metrics``
(Serve custom metrics), ``deploy`` (``deploy()``, ``raydistill serve``, promote/rollback).
May import ``raydistill.core`` and ``raydistill.runtime``.
"""
