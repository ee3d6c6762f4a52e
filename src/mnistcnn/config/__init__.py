"""The run configuration: `schema` (frozen dataclasses) and `build` (defaults < YAML file <
`--set section.key=value`, the torch names a component may take)."""

from __future__ import annotations

from mnistcnn.config.build import (
    build,
    coerce,
    dump,
    from_dict,
    load_config,
    losses,
    merge,
    optimizers,
    parse_overrides,
    read_yaml_file,
    replace_config,
    schedulers,
    to_dict,
)
from mnistcnn.config.schema import (
    DEVICE_PATTERN,
    AugmentConfig,
    Component,
    Config,
    DataConfig,
    TrainConfig,
)

__all__ = [
    "DEVICE_PATTERN",
    "AugmentConfig",
    "Component",
    "Config",
    "DataConfig",
    "TrainConfig",
    "build",
    "coerce",
    "dump",
    "from_dict",
    "load_config",
    "losses",
    "merge",
    "optimizers",
    "parse_overrides",
    "read_yaml_file",
    "replace_config",
    "schedulers",
    "to_dict",
]
