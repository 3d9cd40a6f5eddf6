"""federated: clients emulated with Ray actors: FedAvg, FedProx, FedDF and client-side KD.

Ray-free (import without Ray): ``partition``, ``aggregate``, ``client``, ``strategies``, ``rounds``,
``plan``, ``report``, ``memory``; the Ray edge (``actors``, ``dispatch``, ``server``) is imported only
when a run starts. May import ``raydistill.core``, ``raydistill.runtime`` and ``raydistill.tracking``.
"""
from __future__ import annotations

__all__ = ["run_federated", "run_federated_cli"]


def run_federated(cfg, **kwargs):
    """Library entry point; see :func:`raydistill.federated.server.run_federated`."""
    from raydistill.federated.server import run_federated as _run

    return _run(cfg, **kwargs)


def run_federated_cli(cfg, args=None):
    """``raydistill federated --config ...`` (registered in ``raydistill.cli.commands``)."""
    from raydistill.federated.server import run_federated_cli as _run

    return _run(cfg, args)
