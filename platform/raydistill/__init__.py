"""raydistill: knowledge distillation on Ray (Train, Tune, federated actors, Serve).

The Ray-free core (config, data, models, losses, engine, artifacts) imports without Ray;
the stage adapters (``raydistill.train``, ``raydistill.tune``, ...) import it when used.
"""
__version__ = "0.1.0"

from .artifacts import ArtifactError, load_artifact, load_card, save_artifact
from .config import Config, ConfigError, load_config
from .data import DATASETS, DataError, load_data
from .engine import KDSettings, evaluate, predict_logits
from .losses import ensemble_soft_targets, kd_loss
from .models import MODELS, build_model, count_parameters

__all__ = [
    "__version__", "Config", "ConfigError", "load_config", "DATASETS", "DataError", "load_data",
    "MODELS", "build_model", "count_parameters", "kd_loss", "ensemble_soft_targets", "KDSettings",
    "evaluate", "predict_logits", "ArtifactError", "save_artifact", "load_artifact", "load_card",
]
