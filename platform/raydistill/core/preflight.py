"""Checks that need more than the config's own types (model names, data on disk), run before
any Ray work so that bad input fails in a second, with the dotted key in the message."""
from __future__ import annotations

from .config import Config, ConfigError
from .data import DATASETS, DataBundle, load_data
from .models import MODELS, build_model
from .registry import UnknownNameError
from .teachers import teacher_cards


def _check_model(key: str, name: str, args: dict, bundle: DataBundle) -> None:
    if name not in MODELS:
        raise ConfigError(f"{key}.name: unknown model '{name}'; known: {', '.join(MODELS.names())}")
    try:
        build_model(name, bundle.input_shape, bundle.num_classes, args)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{key}.args: {exc}") from exc


def _check_splits(cfg: Config, bundle: DataBundle) -> None:
    """Every split a stage scores on holds at least one example: a fraction that rounds to zero
    examples would train for minutes and then fail (or rank trials) on an empty split."""
    sizes = bundle.describe()
    if sizes["train"] == 0:
        raise ConfigError(f"data: no training examples left ({sizes}); lower data.val_fraction / data.test_fraction "
                          "or raise data.train_limit")
    if sizes["test"] == 0:
        raise ConfigError(f"data.test_fraction: {cfg.data.test_fraction} leaves 0 test examples of {bundle.name} "
                          f"({sizes}); every stage scores its model on the test split")
    if cfg.data.val_fraction > 0 and sizes["val"] == 0:
        raise ConfigError(f"data.val_fraction: {cfg.data.val_fraction} leaves 0 validation examples ({sizes}); "
                          "raise it, or set 0 for no validation split")


def _check_augment(cfg: Config, bundle: DataBundle) -> None:
    """``augment.translate`` k shifts by up to k px: below half the image's shorter side, or the
    shifted images are mostly fill (k >= the side leaves them blank) and the padded batch grows as
    (H+2k)(W+2k). ``augment.cutout`` s erases an s x s square: below the shorter side, or a centred
    square erases a whole band of the image (all of a square image)."""
    height, width = bundle.input_shape[1:]
    most = (min(height, width) - 1) // 2
    for section in ("teacher", "distill", "federated"):
        spec = getattr(cfg, section).augment
        if spec.translate > most:
            raise ConfigError(f"{section}.augment.translate: {spec.translate} px on the {height} x {width} px images of "
                              f"{bundle.name} would shift most of each image out of view; use at most {most} px")
        if spec.cutout >= min(height, width):
            raise ConfigError(f"{section}.augment.cutout: squares of {spec.cutout} px on the {height} x {width} px images "
                              f"of {bundle.name} can erase a whole band of an image; use at most {min(height, width) - 1} px")


def _check_trial_schedule(cfg: Config) -> None:
    """Trials train ``tune.max_epochs`` epochs with ``distill``'s recipe: its warm-up and milestones
    (in epochs) must fall inside a trial, or every trial ranks settings under a schedule the final
    run does not use (still warming up, or never decayed)."""
    d, trial = cfg.distill, cfg.tune.max_epochs
    if d.warmup_epochs >= trial:
        raise ConfigError(f"tune.max_epochs: trials train {trial} epochs, all inside distill.warmup_epochs="
                          f"{d.warmup_epochs}; raise tune.max_epochs above it or shorten the warm-up")
    late = [m for m in d.milestones if m >= trial]
    if late:
        raise ConfigError(f"tune.max_epochs: trials train {trial} epochs, so distill.milestones {late} never "
                          f"decay a trial's lr; raise tune.max_epochs past them or sweep with scheduler: cosine")


def _check_trial_targets(cfg: Config) -> None:
    """Trials distill from soft targets cached once for the sweep (tuning.inputs), never online: no
    teacher features (fitnet), and an augmented (or mixed) student input needs the teacher's logits on
    that view, so cached views."""
    d = cfg.distill
    if not cfg.tune.method and d.method == "fitnet":
        raise ConfigError("distill.method: Tune's trials distill from cached soft targets, and fitnet needs the "
                          "teacher's features online; sweep the logit methods (tune.method=[kd, dkd, ...]) "
                          "and run fitnet with `raydistill distill`")
    if d.augment.active() and d.cached_views == 0:
        raise ConfigError("distill.augment: Tune's trials distill from soft targets cached once for the sweep "
                          "(not online), and clean-input logits do not match augmented or mixed inputs; set "
                          "distill.mode=cached and distill.cached_views=K (the teacher on K views of each "
                          "example), or sweep without distill.augment")


def preflight(cfg: Config, stage: str, bundle: DataBundle | None = None) -> DataBundle:
    """Load the data set and build each model the stage needs once, on the CPU; return the data.
    ``bundle``: ``cfg.data``'s data, already loaded (configs that differ in their recipes only)."""
    if stage == "tune" and cfg.data.val_fraction == 0:
        raise ConfigError("data.val_fraction: 0 leaves no validation split, which tune ranks trials on; "
                          "keep a validation split for the sweep and train the final student with 0")
    if stage == "tune" or (stage == "pipeline" and cfg.pipeline.tune):
        _check_trial_targets(cfg)
        _check_trial_schedule(cfg)
    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown data set '{cfg.data.name}'; known: {', '.join(DATASETS.names())}")
    try:
        bundle = bundle if bundle is not None else load_data(cfg.data, cfg.run.seed)
    except UnknownNameError as exc:  # pragma: no cover - guarded above
        raise ConfigError(f"data.name: {exc}") from exc
    _check_splits(cfg, bundle)
    _check_augment(cfg, bundle)
    if stage in ("teacher", "pipeline", "compress-report"):
        _check_model("teacher.model", cfg.teacher.model.name, cfg.teacher.model.args, bundle)
        for i, spec in enumerate(cfg.teacher.models if stage == "teacher" else []):
            _check_model(f"teacher.models[{i}]", spec.name, spec.args, bundle)
    if stage in ("distill", "baseline", "tune", "pipeline", "compress-report"):
        _check_model("distill.student", cfg.distill.student.name, cfg.distill.student.args, bundle)
    if stage == "federated":
        _check_model("federated.model", cfg.federated.model.name, cfg.federated.model.args, bundle)
    if stage == "distill" or (stage == "tune" and (cfg.distill.teacher or cfg.distill.teachers)):
        teacher_cards(cfg, bundle)  # a missing, damaged or mismatched teacher fails here, not after Ray starts
    return bundle
