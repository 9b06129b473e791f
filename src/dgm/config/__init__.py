"""Validated configuration (pydantic), one model per concern, saved with every run.

A config is built from defaults, then a TOML file, then ``--set key=value`` overrides and CLI
flags. Every problem (an unknown key, a wrong type, an impossible value, invalid TOML) becomes one
:class:`~dgm.errors.ConfigError` line that names the key and what was expected.

The parts: :mod:`dgm.config.sections` (one model per section, with its defaults),
:mod:`dgm.config.schema` (the whole :class:`Config`, its checks across sections, a run's saved
configuration) and :mod:`dgm.config.files` (TOML files, shipped configurations by name,
``--set`` overrides). Everything public is importable from ``dgm.config``.
"""

from dgm.config.files import (
    CONFIGS_DIR,
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    config_path,
    parse_value,
    read_config_text,
    read_toml,
    set_key,
    shipped_configs,
)
from dgm.config.schema import (
    RESUME_KEYS,
    RUNTIME_KEYS,
    Config,
    load_config,
    load_run_config,
    same_run,
    save_config,
    validate,
)
from dgm.config.sections import (
    CLASSICAL,
    FAMILIES,
    FAMILY_DEFAULTS,
    MAX_SEED,
    DataConfig,
    DiffusionConfig,
    EBMConfig,
    EMConfig,
    GANConfig,
    InferenceConfig,
    ModelConfig,
    ObjectiveConfig,
    RBMConfig,
    TrainConfig,
    UpperLayer,
    check_seed,
    parse_posterior,
    parse_size,
)
from dgm.errors import ConfigError

__all__ = [
    "CLASSICAL",
    "CONFIGS_DIR",
    "FAMILIES",
    "FAMILY_DEFAULTS",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_SEED",
    "RESUME_KEYS",
    "RUNTIME_KEYS",
    "Config",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "EBMConfig",
    "EMConfig",
    "GANConfig",
    "InferenceConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "RBMConfig",
    "TrainConfig",
    "UpperLayer",
    "check_seed",
    "config_path",
    "load_config",
    "load_run_config",
    "parse_posterior",
    "parse_size",
    "parse_value",
    "read_config_text",
    "read_toml",
    "same_run",
    "save_config",
    "set_key",
    "shipped_configs",
    "validate",
]
