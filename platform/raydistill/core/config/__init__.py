"""config: the typed config tree: ``schema`` (dataclasses, the one home of every default),
``rules`` + ``serve_rules`` (range checks naming the dotted key, on ``checks``' primitives),
``loading`` (YAML + ``--set`` overrides).
Ray-free; imports nothing else from raydistill.
"""
from .loading import config_from_dict, load_config, parse_override, save_config, saved_run_config
from .rules import ConfigError, validate
from .schema import (CompressSection, Config, DataSection, DistillSection, FederatedSection,
                                           ModelSpec, PipelineSection, RunSection, ServeSection, TeacherRef,
                                           TeacherSection, TuneSection)

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "save_config", "saved_run_config", "parse_override", "validate",
           "RunSection", "DataSection", "ModelSpec", "TeacherSection", "TeacherRef", "DistillSection", "TuneSection",
           "FederatedSection", "ServeSection", "CompressSection", "PipelineSection"]
