"""Hostile configs: random YAML documents load or fail with one ConfigError, never anything else."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnistcnn.cli import main
from mnistcnn.config.build import load_config, to_dict
from mnistcnn.config.schema import Config
from mnistcnn.errors import ConfigError

DEFAULTS = to_dict(Config())
SECTIONS = [f.name for f in dataclasses.fields(Config)]
KEYS = sorted({key for section in DEFAULTS.values() for key in section} | {"typo", "lr", "name"})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["SGD", "AdamW", "OneCycleLR", "StepLR", "cnn", "baseline", "none", "cuda"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=10,
)
documents = st.dictionaries(
    st.sampled_from([*SECTIONS, "extra"]),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=5) | values,
    max_size=6,
)


def _load(tmp: Path, text: str) -> None:
    path = tmp / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    assert isinstance(cfg, Config)


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings: a few examples in the inner loop, many in the slow run."""
    checks = [HealthCheck.function_scoped_fixture]
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=checks)


@fuzz(60)
@given(doc=documents)
def test_random_documents_load_or_raise_config_error(tmp_path: Path, doc: dict[str, Any]) -> None:
    _load(tmp_path, yaml.safe_dump(doc))


@pytest.mark.slow
@fuzz(300)
@given(doc=documents)
def test_many_random_documents_load_or_raise_config_error(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    _load(tmp_path, yaml.safe_dump(doc))


@fuzz(60)
@given(text=st.text(max_size=200))
def test_random_text_loads_or_raises_config_error(tmp_path: Path, text: str) -> None:
    _load(tmp_path, text)


@pytest.mark.slow
@fuzz(200)
@given(text=st.text(max_size=200))
def test_much_random_text_loads_or_raises_config_error(tmp_path: Path, text: str) -> None:
    _load(tmp_path, text)


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['touch pwned']",
        "data: !!python/object/new:pathlib.Path ['x']",
        "optim: {name: !!python/name:os.system }",
        "a: &a [*a]",
        "data: {root: [1, 2]}",
        "- just\n- a list\n",
    ],
)
def test_crafted_documents_fail_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    assert main(["config", "show", "--config", "bad.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistcnn: error: ") and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists()
