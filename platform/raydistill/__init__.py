"""raydistill: knowledge distillation on Ray (Train, Tune, federated actors, Serve).

The Ray-free core (config, data, models, losses, engine, artifacts) imports without Ray;
the stage adapters (``raydistill.training.driver``, ``raydistill.tuning.sweep``, ...) import it when used.
"""
from raydistill.core.version import __version__

from raydistill.core.artifacts import ArtifactError, load_artifact, load_card, save_artifact
from raydistill.core.config import Config, ConfigError, load_config
from raydistill.core.data import DATASETS, DataError, load_data
from raydistill.core.engine import KDSettings, evaluate, predict_logits
from raydistill.core.losses import ensemble_soft_targets, kd_loss
from raydistill.core.models import MODELS, build_model, count_parameters

__all__ = [
    "__version__", "Config", "ConfigError", "load_config", "DATASETS", "DataError", "load_data",
    "MODELS", "build_model", "count_parameters", "kd_loss", "ensemble_soft_targets", "KDSettings",
    "evaluate", "predict_logits", "ArtifactError", "save_artifact", "load_artifact", "load_card",
]
