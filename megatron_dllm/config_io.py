"""Read YAML config files of flag values (Megatron-LM flag names, dashes or underscores)."""

from __future__ import annotations

import dataclasses

import yaml

from megatron_dllm.config import ConfigError, ModelConfig


def read_yaml(path: str) -> dict:
    """The mapping in a YAML file, keys normalised to underscores."""
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag: value")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def model_config_from_mapping(values: dict) -> ModelConfig:
    """ModelConfig from ``preset`` (optional) plus field overrides; other keys are left to the caller."""
    from megatron_dllm.model.presets import get_preset

    base = get_preset(values["preset"]) if values.get("preset") else ModelConfig()
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return dataclasses.replace(base, **{k: v for k, v in values.items() if k in names})


def load_model_config(path: str) -> ModelConfig:
    """The ModelConfig described by a YAML config file."""
    return model_config_from_mapping(read_yaml(path))
