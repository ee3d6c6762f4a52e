"""The run configuration: `schema` (frozen dataclasses), `components` (the torch names a
component may take), `build` (defaults < YAML file < `--set section.key=value`).
"""

from __future__ import annotations

from mnistcnn.config.build import (
    build,
    coerce,
    dump,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    read_yaml_file,
    replace_config,
    to_dict,
)
from mnistcnn.config.components import losses, optimizers, schedulers
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
