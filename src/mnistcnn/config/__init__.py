"""The run configuration: a frozen, typed dataclass tree, read from YAML and `--set` overrides.

`schema` holds the dataclasses, `components` the torch names a component may take, `build`
the layering (defaults < YAML file < `--set section.key=value`) and the YAML text.
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
    parse_yaml,
    read_yaml_file,
    replace_config,
    to_dict,
)
from mnistcnn.config.components import LOSSES, losses, optimizers, schedulers
from mnistcnn.config.schema import (
    DEVICE_PATTERN,
    FREEZE,
    AugmentConfig,
    Component,
    Config,
    DataConfig,
    TrainConfig,
)

__all__ = [
    "DEVICE_PATTERN",
    "FREEZE",
    "LOSSES",
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
    "parse_yaml",
    "read_yaml_file",
    "replace_config",
    "schedulers",
    "to_dict",
]
