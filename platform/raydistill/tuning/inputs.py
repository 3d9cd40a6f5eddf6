"""What every trial of a sweep shares: the training set with its teachers' soft targets, computed
once (in the sweep's process, or by a Ray Data pool: ``distill.soft_targets``), and the trial
function bound to them through the object store (``tune.with_parameters``)."""
from __future__ import annotations

from raydistill.core.config import Config


def shared_inputs(cfg: Config, bundle, teachers, settings) -> dict:
    """Soft targets computed ONCE, as numpy arrays: ``{"train": (x, y, logits), "val": (x, y)}`` (with a
    view cache ``(x, y, idx, values, indices, rest)``); Tune puts them in the object store once.

    ``distill.soft_targets=workers`` (default): in this process, as a 1-worker run computes its share
    (every trial needs the whole set, so the sweep computes it for them), on a GPU when
    ``run.use_gpu`` and this process has one. ``ray_data``: a Ray Data actor pool on the cluster
    (``distill.soft_target_actors``), for teachers or data sets too large for the driver; its start-up
    costs ~8 s here, a tenth of a short sweep (README, "Tune: ASHA vs full budget").
    """
    from raydistill.training.driver import check_cache_size, ray_data_soft_targets, use_gpu
    from raydistill.training.soft_targets import soft_target_arrays

    check_cache_size(cfg, bundle, len(teachers))
    pairs = [(card, state) for _, card, state, _ in teachers]
    if cfg.distill.soft_targets == "ray_data":
        from raydistill.runtime import cluster_cpus

        train = soft_target_arrays(ray_data_soft_targets(cfg, bundle, pairs, use_gpu=use_gpu(cfg), cpus=cluster_cpus()))
    else:
        train = driver_soft_targets(cfg, bundle, pairs, settings.spec.views)
    return {"train": train, "val": (bundle.x_val, bundle.y_val)}


def driver_soft_targets(cfg: Config, bundle, pairs, views) -> tuple:
    """The training set and its teachers' logits ``(N, C)`` / ``(N, K, C)`` (or view cache), computed here."""
    import torch

    from raydistill.core.artifacts import model_from_state
    from raydistill.core.engine import read_only_tensors
    from raydistill.core.topk import resolve_topk
    from raydistill.training.worker import cached_share

    device = torch.device("cuda" if cfg.run.use_gpu and torch.cuda.is_available() else "cpu")
    models = [model_from_state(card, state).to(device) for card, state in pairs]
    train = list(read_only_tensors((bundle.x_train, bundle.y_train)))
    out = cached_share(train, models, views, resolve_topk(cfg.distill.cache_topk, bundle.num_classes),
                       rank=0, device=device, pool=train[0])  # all of it: mixed views' partners too
    return tuple(t.numpy() for t in out)


def trainable(cfg: Config, data: dict, settings):
    """The trial function with its resources and the shared inputs bound (object store, once)."""
    from ray import tune

    from raydistill.runtime import TRIAL_DRIVER_CPUS
    from raydistill.tuning.trial import distill_trial, distill_trial_on_train

    fn, resources = (distill_trial, {"cpu": 1}) if settings.workers == 1 else (distill_trial_on_train, {"cpu": TRIAL_DRIVER_CPUS})
    return tune.with_resources(tune.with_parameters(fn, data=data, settings=settings), resources)


__all__ = ["shared_inputs", "driver_soft_targets", "trainable"]
