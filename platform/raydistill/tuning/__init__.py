"""tuning: the temperature x alpha (x lr) sweep on Ray Tune with ASHA.

``sweep`` (driver: Tuner, resume, chosen student), ``space`` (search space, concurrency cap; pure),
``inputs`` (soft targets once, the bound trial function), ``trial`` (one trial's training), ``report`` (results table, heatmap, curves, best.yaml; pure).
May import ``raydistill.core``, ``raydistill.runtime``, ``raydistill.training`` and ``raydistill.tracking``.
"""
