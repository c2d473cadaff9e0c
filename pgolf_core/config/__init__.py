"""The typed config tree: one ``RunConfig`` loaded from YAML under params/, validated before any compute.

Sections: data, model, optim, train, quant, eval, ttt, ngram, report. Every field has a default; the
defaults are the challenge's naive baseline (records/track_10min_16mb/2026-03-17_NaiveBaseline,
1.2244 bpb), so an empty YAML file *is* the baseline.

Rooms: ``section`` (the strict base class), ``model`` (the model section, grouped like
pgolf_core/model/), ``sections`` (data, optim, train, quant, report and ``RunConfig``),
``eval_sections`` (eval, ttt, ngram), ``strict_yaml`` (the YAML reader), ``loader`` (extends,
overrides, error messages, round trip).

Rules:
- ``load_config`` is the only door. Unknown keys, wrong types and bad choices are rejected with an error
  that names the file, the dotted key, what was given and what is valid (with a "did you mean").
- Hyperparameters never come from environment variables; ``pgolf_core.dist`` alone reads torchrun's
  RANK / WORLD_SIZE / LOCAL_RANK.
"""

from pgolf_core.config.loader import (
    config_from_dict,
    deep_merge,
    describe_schema,
    load_config,
    parse_overrides,
    read_params_tree,
    to_dict,
    to_yaml,
)
from pgolf_core.config.model import (
    RENAMED_MODEL_KEYS,
    AttentionConfig,
    AttentionGateConfig,
    BigramConfig,
    EmbeddingsConfig,
    LoopsConfig,
    MLPConfig,
    ModelConfig,
    ParallelConfig,
    ResidualConfig,
    RotaryConfig,
    SmearConfig,
    ValueEmbeddingConfig,
    WindowConfig,
)
from pgolf_core.config.section import Section
from pgolf_core.config.sections import (
    RUNTIME_CODE_FILES,
    SECTIONS,
    TOKENIZER_FOR_VARIANT,
    DataConfig,
    EvalConfig,
    NgramConfig,
    OptimConfig,
    QuantConfig,
    QuantGroupConfig,
    ReportConfig,
    RunConfig,
    TrainConfig,
    TTTConfig,
)
from pgolf_core.config.strict_yaml import ConfigError, echo, yaml_load

__all__ = [
    "RENAMED_MODEL_KEYS",
    "RUNTIME_CODE_FILES",
    "SECTIONS",
    "TOKENIZER_FOR_VARIANT",
    "AttentionConfig",
    "AttentionGateConfig",
    "BigramConfig",
    "ConfigError",
    "DataConfig",
    "EmbeddingsConfig",
    "EvalConfig",
    "LoopsConfig",
    "MLPConfig",
    "ModelConfig",
    "NgramConfig",
    "OptimConfig",
    "ParallelConfig",
    "QuantConfig",
    "QuantGroupConfig",
    "ReportConfig",
    "ResidualConfig",
    "RotaryConfig",
    "RunConfig",
    "Section",
    "SmearConfig",
    "TTTConfig",
    "TrainConfig",
    "ValueEmbeddingConfig",
    "WindowConfig",
    "config_from_dict",
    "deep_merge",
    "describe_schema",
    "echo",
    "load_config",
    "parse_overrides",
    "read_params_tree",
    "to_dict",
    "to_yaml",
    "yaml_load",
]
