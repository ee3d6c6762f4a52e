"""Config: defaults vs configs/base.yaml, YAML files, `--set` overrides, and every error path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnistcnn.config.build import (
    dump,
    from_dict,
    load_config,
    losses,
    optimizers,
    override,
    parse_overrides,
    schedulers,
    to_dict,
)
from mnistcnn.config.schema import Component, Config
from mnistcnn.errors import ConfigError

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped configs -------------------------------------------------------------------


def test_defaults_are_configs_base_yaml() -> None:
    base = CONFIGS / "base.yaml"
    if not base.is_file():
        pytest.skip("configs/base.yaml is not there yet")
    assert load_config(base) == Config()
    # Not just equal after merging onto the defaults: the file spells every section out.
    assert set(yaml.safe_load(base.read_text())) == set(to_dict(Config()))


def test_there_are_shipped_configs() -> None:
    assert any(p.name == "tiny.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # and survives a round trip through `config show`'s YAML
    assert from_dict(yaml.safe_load(dump(cfg))) == cfg


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_comments_every_value(path: Path) -> None:
    # STYLE.md: every shipped YAML carries a comment per hyperparameter.
    bare = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"^\s*\w+:\s*\S", line) and "#" not in line
    ]
    assert not bare, "values without a comment:\n" + "\n".join(bare)


def test_load_config_without_a_file_is_the_defaults() -> None:
    assert load_config() == Config()
    assert load_config(None, []) == Config()


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.name=Adam", "optim.lr=0.01", "sched.name=none"])
    assert load_config(write(tmp_path, dump(cfg))) == cfg


# --- unknown keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("trian.epochs=3", "trian", ["data", "model", "loss", "optim", "sched", "train"]),
        ("train.epoch=3", "train.epoch", ["epochs", "seed", "device", "output"]),
        ("data.augment.degree=3", "data.augment.degree", ["degrees", "translate", "scale"]),
        ("optim.lrr=0.1", "optim.lrr", ["lr", "momentum", "weight_decay", "nesterov"]),
        ("model.chanels=[8]", "model.chanels", ["channels", "convs_per_stage", "dropout"]),
        ("loss.smoothing=0.1", "loss.smoothing", ["label_smoothing", "reduction"]),
        ("sched.max_rate=1", "sched.max_rate", ["max_lr", "pct_start"]),
    ],
)
def test_unknown_key_names_it_and_lists_the_valid_ones(
    override: str, key: str, valid: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert key in message
    for name in valid:
        assert re.search(rf"\b{name}\b", message), f"{name} not listed in: {message}"


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: 3\n  sed: 1\n")
    with pytest.raises(ConfigError, match=r"train\.sed.*valid keys:.*\bseed\b"):
        load_config(path)


# --- wrong types and values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=ten", "train.epochs"),
        ("train.epochs=1.5", "train.epochs"),
        ("train.epochs=true", "train.epochs"),
        ("train.amp=1", "train.amp"),
        ("train.output=[a.pth]", "train.output"),
        ("data.augment.degrees=abc", "data.augment.degrees"),
        ("data.augment=3", "data.augment"),
        ("data.root=7", "data.root"),
        ("model.channels=abc", "model.channels"),
        ("model.channels=[8, x]", "model.channels[1]"),
        ("model.dropout=[0.1]", "model.dropout"),
        ("optim.momentum=true", "optim.momentum"),
        ("optim.nesterov=0", "optim.nesterov"),
        ("optim=3", "optim"),
        ("optim=[SGD]", "optim"),
    ],
)
def test_wrong_type_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=0", "train.epochs"),
        ("train.threads=-1", "train.threads"),
        ("train.log_every=0", "train.log_every"),
        ("train.keep=first", "train.keep"),
        ("train.precise_bn=-1", "train.precise_bn"),
        ("train.device=gpu", "train.device"),
        ("train.output=model.pt", "train.output"),
        ("data.val_size=0", "data.val_size"),
        ("data.val_size=60000", "data.val_size"),
        ("data.subset=-1", "data.subset"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.std=0", "data.std"),
        ("data.augment.degrees=200", "data.augment.degrees"),
        ("data.augment.translate=1", "data.augment.translate"),
        ("data.augment.scale=-0.1", "data.augment.scale"),
        ("data.augment.ink=1.5", "data.augment.ink"),
        ("data.augment.lowres=-0.1", "data.augment.lowres"),
    ],
)
def test_out_of_range_value_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("section", "bad", "valid"),
    [
        ("optim", "Adamm", list(optimizers())),
        ("sched", "OneCycle", list(schedulers())),
        ("loss", "MSELoss", list(losses())),
        ("model", "resnet", ["baseline", "cnn"]),
    ],
)
def test_bad_component_name_lists_the_valid_ones(section: str, bad: str, valid: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{section}.name={bad}"])
    message = str(info.value)
    assert section in message and bad in message
    for name in valid:
        assert re.search(rf"\b{name}\b", message), f"{name} not listed in: {message}"


def test_component_lists_hold_the_usual_names() -> None:
    assert {"SGD", "Adam", "AdamW"} <= optimizers().keys()
    assert {"OneCycleLR", "StepLR", "ReduceLROnPlateau", "CosineAnnealingLR"} <= schedulers().keys()
    # schedulers that need Python callables or other scheduler objects cannot come from YAML
    assert not {"LambdaLR", "SequentialLR", "ChainedScheduler"} & schedulers().keys()
    assert set(losses()) == {"CrossEntropyLoss", "MultiMarginLoss"}


@pytest.mark.parametrize("value", ["[1]", "{a: 1}"])
@pytest.mark.parametrize("section", ["optim", "sched", "loss", "model"])
def test_component_name_that_is_not_a_string_is_a_config_error(section: str, value: str) -> None:
    with pytest.raises(ConfigError, match=section):
        load_config(None, [f"{section}.name={value}"])


# --- overrides -----------------------------------------------------------------------------


def test_set_overrides_values_of_every_depth() -> None:
    cfg = load_config(
        None,
        [
            "train.epochs=3",
            "data.augment.degrees=5",
            "data.root=/tmp/mnist dir",
            "model.channels=[8, 16]",
            "model.convs_per_stage=[1, 1]",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.data.augment.degrees == 5.0 and isinstance(cfg.data.augment.degrees, float)
    assert cfg.data.augment.translate == Config().data.augment.translate  # siblings kept
    assert cfg.data.root == "/tmp/mnist dir"
    assert cfg.model.kwargs["channels"] == (8, 16)
    assert cfg.model.kwargs["dropout"] == 0.1  # same model name: other kwargs kept


def test_set_beats_the_file_which_beats_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: 4\n  seed: 9\n")
    cfg = load_config(path, ["train.epochs=2"])
    assert (cfg.train.epochs, cfg.train.seed) == (2, 9)
    assert cfg.train.device == Config().train.device


def test_component_rename_drops_the_old_kwargs() -> None:
    cfg = load_config(None, ["optim.name=Adam"])
    assert cfg.optim == Component("Adam", {})  # no SGD momentum/nesterov carried over
    cfg = load_config(None, ["optim.lr=0.01", "optim.name=Adam"])
    assert cfg.optim == Component("Adam", {"lr": 0.01})
    cfg = load_config(None, ["model.name=baseline"])
    assert cfg.model == Component("baseline", {})


def test_component_rename_in_a_file_drops_the_old_kwargs(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  name: AdamW\n  weight_decay: 0.01\n")
    assert load_config(path).optim == Component("AdamW", {"weight_decay": 0.01})


def test_same_component_name_keeps_the_kwargs() -> None:
    assert load_config(None, ["optim.name=SGD"]).optim == Config().optim


@pytest.mark.parametrize("override", ["sched.name=none", "sched.name=null", "sched=null"])
def test_no_scheduler(override: str) -> None:
    assert load_config(None, [override]).sched == Component(None, {})


def test_exponent_without_a_dot_is_a_float(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads `1e-3` as a string; the config must not.
    cfg = load_config(None, ["optim.lr=1e-3", "data.augment.scale=5E-2"])
    assert cfg.optim.kwargs["lr"] == 0.001 and isinstance(cfg.optim.kwargs["lr"], float)
    assert cfg.data.augment.scale == 0.05
    path = write(tmp_path, "optim:\n  name: Adam\n  lr: 3e-4\n")
    assert load_config(path).optim.kwargs["lr"] == 3e-4
    assert parse_overrides(["a.b=1e3"]) == {"a": {"b": 1000.0}}


def test_int_for_a_float_becomes_a_float() -> None:
    cfg = load_config(None, ["data.augment.degrees=0", "optim.lr=1"])
    assert isinstance(cfg.data.augment.degrees, float)
    assert cfg.optim.kwargs["lr"] == 1


@pytest.mark.parametrize("item", ["train.epochs", "=3", "train..epochs=3", ".epochs=3"])
def test_malformed_set_is_refused(item: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides([item])


def test_set_below_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="train"):
        parse_overrides(["train=1", "train.epochs=3"])


# --- YAML safety and syntax ----------------------------------------------------------------


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(
        tmp_path, f"train:\n  epochs: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(None, [f"train.epochs=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: 3\n  seed: [1, 2\n  device: cpu\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(rf"{re.escape(str(path))}:[34]\b", message), message


def test_yaml_error_in_a_set_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"--set model\.channels"):
        load_config(None, ["model.channels=[8, 16"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_config_file_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path, "- train\n- data\n"))


def test_empty_config_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing\n")) == Config()


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"train:\n  output: \xff\xfe.pth\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(path)


# --- property: any override either loads or is a ConfigError -------------------------------

KEYS = [
    *(f"{section}.{key}" for section, keys in to_dict(Config()).items() for key in keys),
    "data.augment.degrees",
    "data.augment.translate",
    "model.convs_per_stage",
    "model.kernel_size",
    "model.residual",
    "optim.betas",
    "sched.step_size",
    "train",
    "data.augment",
    "nope.key",
    "train.nope",
]
NAMES = ["cnn", "baseline", "SGD", "Adam", "StepLR", "none", "CrossEntropyLoss", "LambdaLR"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2)
    ),
    max_leaves=5,
)


def _override_fuzz(max_examples: int) -> settings:
    checks = [HealthCheck.too_slow]
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=checks
    )


OVERRIDES = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=3)


@_override_fuzz(60)
@given(overrides=OVERRIDES)
@example(overrides=[("optim.name", [1])])
@example(overrides=[("model.channels", "!!python/name:os.system")])
def test_any_override_loads_or_is_a_config_error(overrides: list[tuple[str, object]]) -> None:
    _load_overrides(overrides)


@pytest.mark.slow
@_override_fuzz(300)
@given(overrides=OVERRIDES)
def test_many_overrides_load_or_are_a_config_error(overrides: list[tuple[str, object]]) -> None:
    _load_overrides(overrides)


def _load_overrides(overrides: list[tuple[str, object]]) -> None:
    items = []
    for key, value in overrides:
        # Values go through YAML, as `--set` does; plain strings are passed as typed.
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True)
        items.append(f"{key}={text.strip().removesuffix('...').strip()}")
    try:
        cfg = load_config(None, items)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(cfg, Config)


def test_repo_layout_assumption() -> None:
    # The tests find configs relative to the repository, not the working directory.
    assert (REPO / "pyproject.toml").is_file()


def test_a_number_argument_takes_any_number_but_not_a_bool() -> None:
    cfg = load_config(None, ["optim.momentum=0.9"])  # SGD's default momentum is the int 0
    assert cfg.optim.kwargs["momentum"] == 0.9
    with pytest.raises(ConfigError, match=r"optim.momentum: expected a number, got True"):
        load_config(None, ["optim.momentum=true"])


def test_override_gives_a_key_exactly_its_value() -> None:
    path = Path("/tmp/a: b #c/data")
    cfg = load_config(None, [override("data.root", path), override("train.output", path / "m.pth")])
    assert (cfg.data.root, cfg.train.output) == (str(path), str(path / "m.pth"))
