"""Range rules for the config tree: each failure names the dotted key and the allowed range."""
from __future__ import annotations

import math
from typing import Any

from ..methods import CHOICES as METHOD_CHOICES, TERM_WEIGHTS, parse_method
from .checks import ConfigError, fraction, one_of, positive, require
from .serve_rules import validate_serve

__all__ = ["ConfigError", "validate"]

MAX_TEMPERATURE = 100.0  # KD's T^2 * KL in float32: 0.03% off at T=100, 2% at 1e3, wrong sign by 1e4
MAX_SEED = 2**32 - 1  # numpy's legacy seeds; derived seeds (seed * 100003 + epoch, core.loop) stay in int64


def _seed(value: int, key: str) -> None:
    require(0 <= value <= MAX_SEED, key, f"must be in [0, {MAX_SEED}] (2**32 - 1: numpy seeds are unsigned 32-bit, "
                                          f"and training derives per-epoch seeds from it), got {value}")


def _range_pair(values: list[float], key: str, *, low: float, high: float | None) -> None:
    require(len(values) >= 1, key, "must not be empty")
    for v in values:
        require(v >= low if low == 0 else v > low, key, f"values must be > {low}, got {v}")
        if high is not None:
            require(v <= high, key, f"values must be <= {high}, got {v}")


def validate(cfg: Any) -> None:
    """Check every range rule; raise ConfigError on the first that fails."""
    require("://" not in cfg.run.storage_path, "run.storage_path",
            "must be a filesystem path (on a multi-node cluster: a shared mount such as EFS/NFS at the same "
            f"path on every node), not a URI; got {cfg.run.storage_path!r}")
    _seed(cfg.run.seed, "run.seed")
    _validate_tracking_uri(cfg.run.tracking_uri)
    _validate_data(cfg)
    _validate_recipe(cfg, "teacher")
    _validate_recipe(cfg, "distill")
    positive(cfg, "distill", "temperature", "soft_target_actors")
    for key, t in (("distill.temperature", cfg.distill.temperature), ("federated.distill_temperature",
                                                                      cfg.federated.distill_temperature)):
        require(t <= MAX_TEMPERATURE, key, f"must be <= {MAX_TEMPERATURE:g}, got {t:g}: past that the float32 KD "
                                            "loss T^2 * KL is rounding noise (T >= 20 already matches logits)")
    fraction(cfg.distill.alpha, "distill.alpha")
    _validate_method(cfg.distill)
    one_of(cfg.distill.mode, "distill.mode", ("cached", "online"))
    one_of(cfg.distill.soft_targets, "distill.soft_targets", ("workers", "ray_data"))
    _validate_views(cfg.distill)
    for i, ref in enumerate(cfg.distill.teachers):
        require(bool(ref.artifact), f"distill.teachers[{i}].artifact", "must name a teacher artifact")
        require(ref.weight > 0, f"distill.teachers[{i}].weight", f"must be > 0, got {ref.weight}")
    for i, seed in enumerate(cfg.teacher.seeds):
        _seed(seed, f"teacher.seeds[{i}]")
    require(len(set(cfg.teacher.seeds)) == len(cfg.teacher.seeds), "teacher.seeds",
            f"must not repeat a seed (identical teachers), got {cfg.teacher.seeds}")
    _validate_tune(cfg)
    _validate_federated(cfg)
    validate_serve(cfg)
    require(cfg.pipeline.smoke_requests >= 1, "pipeline.smoke_requests", "must be >= 1")
    _validate_compress(cfg)


def _validate_method(d: Any) -> None:
    """``distill.method`` and its knobs (core.methods)."""
    one_of(d.method, "distill.method", METHOD_CHOICES)
    for name in ("dkd_alpha", "dkd_beta", "dist_beta", "dist_gamma"):
        value = getattr(d, name)
        require(math.isfinite(value) and value >= 0, f"distill.{name}", f"must be a finite number >= 0, got {value}")
    require(d.dkd_warmup_epochs >= 0, "distill.dkd_warmup_epochs", f"must be >= 0, got {d.dkd_warmup_epochs}")
    _nonzero_weights(d, d.method, "distill.method")
    require(math.isfinite(d.hint_weight) and d.hint_weight >= 0, "distill.hint_weight",
            f"must be a finite number >= 0, got {d.hint_weight}")
    for name in ("hint_layer", "guided_layer"):
        require(bool(getattr(d, name).strip()), f"distill.{name}", "must name a layer, or be auto")
    if parse_method(d.method).hint:
        require(d.mode == "online", "distill.mode", "method fitnet regresses the teacher's features for the batch "
                "the student sees, which cached soft targets do not hold; set distill.mode=online")
        require(len(d.teachers) <= 1, "distill.teachers", f"method fitnet takes its hint from one teacher, "
                f"got an ensemble of {len(d.teachers)}; distill from one, or use a logit method")


def _validate_views(d: Any) -> None:
    """Cached soft targets under augmentation need one cached view per augmented input (core.views)."""
    require(d.cached_views >= 0, "distill.cached_views", f"must be >= 0 (0 = clean inputs only), got {d.cached_views}")
    require(d.cache_topk >= 0, "distill.cache_topk", f"must be >= 0 (0 = auto), got {d.cache_topk}")
    require(math.isfinite(d.cache_max_gb) and d.cache_max_gb > 0, "distill.cache_max_gb",
            f"must be a finite number > 0, got {d.cache_max_gb}")
    if d.cached_views > 0:
        require(d.mode == "cached", "distill.cached_views", "caches the teacher's logits on augmented views, "
                "which distill.mode=online computes per batch anyway; set distill.mode=cached, or cached_views=0")
        require(d.augment.active(), "distill.cached_views", "needs distill.augment (views of what? with no "
                "augmentation every view is the clean input); turn augmentation on, or set cached_views=0")
        return
    require(not (d.mode == "cached" and d.augment.active()), "distill.augment",
            "cached soft targets are the teacher's logits on clean inputs, which an augmented student input "
            "would no longer match; set distill.cached_views=K (the teacher's logits on K seeded views of "
            "each example, cached) or distill.mode=online (the teacher sees every augmented batch), "
            "or turn distill.augment off")


def _nonzero_weights(d: Any, method: str, used_by: str) -> None:
    """The two term weights of ``method`` (``distill.dkd_*`` for dkd, ``distill.dist_*`` for dist) must not
    both be 0, wherever the method runs (``used_by``: distill.method, federated.method, tune.method)."""
    a, b = TERM_WEIGHTS.get(parse_method(method).base, (None, None))
    if a is not None:
        require(getattr(d, a) + getattr(d, b) > 0, f"distill.{b}", f"{a} and {b} are both 0, so the distillation "
                f"term of {used_by}={method} vanishes; give either a weight > 0")


def _validate_tracking_uri(uri: str) -> None:
    """Empty (sqlite under run.storage_path) or an MLflow URI with a scheme (a bare path: the legacy file store)."""
    require(uri == "" or uri == "databricks" or ("://" in uri and uri == uri.strip() and " " not in uri),
            "run.tracking_uri", "must be \"\" (sqlite:///<run.storage_path>/mlflow.db) or a tracking URI with "
            f"a scheme, such as http://mlflow.example:5000 or sqlite:////abs/path/mlflow.db; got {uri!r}")


DIGIT_DATA_SETS = ("digits", "mnist")  # a mirrored digit is another digit (or none)
OPTIMIZERS, SCHEDULERS = ("adam", "adamw", "sgd"), ("none", "cosine", "multistep")


def _validate_recipe(cfg: Any, section: str) -> None:
    """The training recipe keys shared by ``teacher`` and ``distill`` (``core.config.schema.RecipeSection``)."""
    r = getattr(cfg, section)
    positive(cfg, section, "epochs", "batch_size", "lr", "checkpoint_every")
    require(r.workers == "auto" or (isinstance(r.workers, int) and not isinstance(r.workers, bool) and r.workers >= 1),
            f"{section}.workers", f"must be 'auto' or an integer >= 1, got {r.workers!r}")
    require(r.max_failures >= 0, f"{section}.max_failures", "must be >= 0")
    one_of(r.optimizer, f"{section}.optimizer", OPTIMIZERS)
    one_of(r.scheduler, f"{section}.scheduler", SCHEDULERS)
    fraction(r.momentum, f"{section}.momentum", high_open=True)
    require(not r.nesterov or (r.optimizer == "sgd" and r.momentum > 0), f"{section}.nesterov",
            "needs optimizer: sgd with momentum > 0")
    require(r.weight_decay >= 0, f"{section}.weight_decay", f"must be >= 0, got {r.weight_decay}")
    require(r.gamma > 0, f"{section}.gamma", f"must be > 0, got {r.gamma}")
    require(0 <= r.warmup_epochs < r.epochs, f"{section}.warmup_epochs",
            f"must be in [0, epochs), got {r.warmup_epochs} with epochs={r.epochs}")
    fraction(r.label_smoothing, f"{section}.label_smoothing", high_open=True)
    require(r.grad_clip >= 0, f"{section}.grad_clip", f"must be >= 0 (0 = off), got {r.grad_clip}")
    if r.scheduler == "multistep":
        require(bool(r.milestones) and r.milestones == sorted(set(r.milestones)) and
                all(0 < m < r.epochs for m in r.milestones), f"{section}.milestones",
                f"multistep needs increasing epochs in (0, {r.epochs}), got {r.milestones}")
    else:
        require(not r.milestones, f"{section}.milestones", f"only used by scheduler: multistep (got {r.scheduler})")
    _validate_augment(r.augment, section, cfg.data.name)


def _validate_augment(a: Any, section: str, data_name: str) -> None:
    """``<section>.augment`` (``schema.AugmentSpec``) of the teacher, the student or the federated clients."""
    for key in ("translate", "cutout"):
        require(getattr(a, key) >= 0, f"{section}.augment.{key}", f"must be >= 0 px, got {getattr(a, key)}")
    fraction(a.mixup, f"{section}.augment.mixup")
    require(math.isfinite(a.mixup_alpha) and a.mixup_alpha > 0, f"{section}.augment.mixup_alpha",
            f"must be a finite number > 0 (lam ~ Beta(a, a)), got {a.mixup_alpha}")
    require(not (a.hflip and data_name in DIGIT_DATA_SETS), f"{section}.augment.hflip",
            f"data set '{data_name}' holds digits, and a mirrored digit is another digit (or none); "
            f"use {section}.augment.translate instead")


def _validate_data(cfg: Any) -> None:
    d = cfg.data
    require(0 <= d.val_fraction < 1, "data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
    if d.val_fraction == 0:  # train on train+val once settings are chosen; nothing may need validation
        require(not cfg.pipeline.tune, "data.val_fraction", "0 leaves no validation split, which the pipeline's "
                "sweep ranks trials on; set pipeline.tune=false (or keep a validation split)")
    fraction(d.test_fraction, "data.test_fraction", low_open=True, high_open=True)
    require(d.val_fraction + d.test_fraction < 1, "data.val_fraction", "val + test fractions must be < 1")
    require(d.train_limit >= 0, "data.train_limit", "must be >= 0 (0 = all)")
    positive(cfg, "data", "synthetic_samples")
    require(d.synthetic_classes >= 2, "data.synthetic_classes", "must be >= 2")
    require(len(d.synthetic_shape) == 3 and all(s > 0 for s in d.synthetic_shape),
            "data.synthetic_shape", "must be [channels, height, width] of positive ints")


def _validate_tune(cfg: Any) -> None:
    t = cfg.tune
    positive(cfg, "tune", "num_samples", "grace_period", "max_epochs")
    require(t.reduction_factor >= 2, "tune.reduction_factor", "must be >= 2")
    require(t.grace_period <= t.max_epochs, "tune.grace_period", "must be <= tune.max_epochs")
    _range_pair(t.temperature, "tune.temperature", low=0, high=MAX_TEMPERATURE)
    require(all(v > 0 for v in t.temperature), "tune.temperature", "temperatures must be > 0")
    _range_pair(t.alpha, "tune.alpha", low=0, high=1)
    for key, choices in (("temperature_search", ("loguniform", "uniform", "grid")),
                         ("alpha_search", ("uniform", "grid")), ("scheduler", ("asha", "none")),
                         ("searcher", ("random", "optuna")), ("mode", ("max", "min"))):
        one_of(getattr(t, key), f"tune.{key}", choices)
    for name, search in (("temperature", t.temperature_search), ("alpha", t.alpha_search)):
        values = getattr(t, name)
        if search != "grid":
            require(len(values) == 2 and values[0] < values[1], f"tune.{name}",
                    f"a {search} range needs [low, high] with low < high, got {values}")
    if t.lr:
        require(len(t.lr) == 2 and 0 < t.lr[0] < t.lr[1], "tune.lr", f"needs [low, high], 0 < low < high; got {t.lr}")
    for name in t.method:
        one_of(name, "tune.method", METHOD_CHOICES)
        _nonzero_weights(cfg.distill, name, "tune.method")
    require(len(set(t.method)) == len(t.method), "tune.method", f"must not repeat a method, got {t.method}")
    require("fitnet" not in t.method, "tune.method", "Tune's trials distill from cached soft targets and fitnet "
            "needs the teacher's features online; sweep logit methods and run fitnet with `raydistill distill`")
    require(t.max_concurrent >= 0, "tune.max_concurrent", "must be >= 0 (0 = from the cluster's CPUs)")
    require(t.max_retries >= 0, "tune.max_retries", "must be >= 0")
    one_of(t.metric, "tune.metric", ("val_accuracy", "val_loss", "train_loss"))
    require(t.top_k >= 1, "tune.top_k", f"must be >= 1, got {t.top_k}")
    require(t.fail_trial >= -1, "tune.fail_trial", "must be -1 (off) or a trial index >= 0")
    if t.searcher == "optuna":
        require("grid" not in (t.temperature_search, t.alpha_search) and not t.method, "tune.searcher",
                "optuna samples ranges; use temperature_search/alpha_search other than grid and no tune.method grid")
        require(t.fail_trial == -1, "tune.fail_trial", "works with the random searcher only")


def _validate_federated(cfg: Any) -> None:
    f = cfg.federated
    one_of(f.strategy, "federated.strategy", ("fedavg", "fedprox", "feddf", "fedmedian", "fedtrimmedavg"))
    require(0.0 <= f.trim_fraction < 0.5, "federated.trim_fraction", f"must be in [0, 0.5), got {f.trim_fraction}")
    one_of(f.partition, "federated.partition", ("iid", "dirichlet"))
    fraction(f.fraction, "federated.fraction", low_open=True)
    require(f.dirichlet_alpha > 0, "federated.dirichlet_alpha", f"must be > 0, got {f.dirichlet_alpha}")
    positive(cfg, "federated", "clients", "rounds", "local_epochs", "batch_size", "lr", "min_clients",
              "min_partition_size", "round_timeout_s", "actor_memory_gb", "distill_temperature", "distill_lr")
    require(f.mu >= 0, "federated.mu", "must be >= 0")
    require(f.actors >= 0, "federated.actors", "must be >= 0 (0 = from CPUs and memory)")
    fraction(f.failure_prob, "federated.failure_prob", high_open=True)
    fraction(f.proxy_fraction, "federated.proxy_fraction", low_open=True, high_open=True)
    fraction(f.client_kd_alpha, "federated.client_kd_alpha")
    one_of(f.method, "federated.method", tuple(m for m in METHOD_CHOICES if m != "fitnet"))  # logits only
    _nonzero_weights(cfg.distill, f.method, "federated.method")
    require(f.method == "kd" or f.strategy == "feddf" or bool(f.client_teacher), "federated.method",
            f"{f.method} would not be used: it is the soft term of client-side KD (federated.client_teacher) and "
            "FedDF's server distillation (federated.strategy=feddf), and neither is on")
    one_of(f.optimizer, "federated.optimizer", ("sgd", "adam"))
    require(f.distill_epochs >= 0, "federated.distill_epochs", "must be >= 0")
    _validate_augment(f.augment, "federated", cfg.data.name)


def _validate_compress(cfg: Any) -> None:
    c = cfg.compress
    require(len(c.sparsities) >= 1 and all(0 < v < 1 for v in c.sparsities), "compress.sparsities",
            f"needs values in (0, 1), got {c.sparsities}")
    percents = [round(v * 100) for v in c.sparsities]  # each row and its file are named teacher-pruned<percent>
    require(len(set(percents)) == len(percents) and all(0 < p < 100 for p in percents), "compress.sparsities",
            f"needs distinct whole percents in 1..99 (rows are named by them), got {c.sparsities} = {percents} %")
    require(c.finetune_epochs >= 0, "compress.finetune_epochs", "must be >= 0 (0 = no fine-tune)")
    positive(cfg, "compress", "finetune_lr", "latency_repeats", "threads")
    require(len(c.latency_batches) >= 1 and all(b > 0 for b in c.latency_batches), "compress.latency_batches",
            f"needs positive batch sizes, got {c.latency_batches}")
