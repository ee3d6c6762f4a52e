"""The run configuration: `schema` (frozen dataclasses) and `build` (defaults < YAML file <
`--set section.key=value`, the torch names a component may take)."""
