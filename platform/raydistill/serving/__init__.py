"""serving: the chosen student behind Ray Serve over HTTP.

Ray-free: ``validation`` (request checks), ``model_runner`` (verified artifact, normalization, softmax,
INT8), ``service`` (auth, limits, responses), ``bare`` (the same endpoints on plain FastAPI).
Ray edge: ``deployment`` (the Serve deployment), ``app`` (``app_builder``), ``ingress``, ``deploy``
(``deploy()`` and ``raydistill serve``). May import ``raydistill.core`` and ``raydistill.runtime``.
"""
