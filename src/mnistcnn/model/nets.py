"""The networks and their registry: each takes [0, 1] images (N, 1, 28, 28), normalizes them itself
and returns logits (N, 10); its name, arguments, normalization and metrics are its `_extra_state`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mnistcnn.errors import CheckpointError, ConfigError
from mnistcnn.model.layers import (
    CHOICES,
    POOL,
    ConvBlock,
    GlobalAvgPool,
    SpatialAttention,
    Spec,
    Stage,
)

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
NUM_CLASSES = 10
IMAGE_SIZE = 28
# Bumped when the extra state changes meaning; a newer file is refused, not misread.
FORMAT_VERSION = 1
DESCRIPTION = ("arch", "args", "mean", "std", "meta")  # the extra state besides its format


def _check_sizes(sizes: Sequence[int], rates: Sequence[float]) -> None:
    """Layer widths must be positive and dropout rates in [0, 1)."""
    if min(sizes) < 1:
        raise ConfigError(f"model: layer sizes must be >= 1, got {list(sizes)}")
    if not all(0 <= rate < 1 for rate in rates):
        raise ConfigError(f"model: dropout rates must be in [0, 1), got {list(rates)}")


class DigitNet(nn.Module):
    """Base of every registered model: normalization in `forward`, identity in extra state."""

    arch = ""
    features: nn.Module  # set by each model, as is `classifier`
    classifier: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.args: dict[str, Any] = {}
        self.mean, self.std = MNIST_MEAN, MNIST_STD
        self.meta: dict[str, Any] = {}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits((images - self.mean) / self.std)

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION} | {key: getattr(self, key) for key in DESCRIPTION}

    def set_extra_state(self, state: Any) -> None:
        describe(state)  # validates
        # A file saved before an option existed lacks its key: compare with defaults filled in.
        args = state["args"]
        if state["arch"] == self.arch and isinstance(args, dict):
            with contextlib.suppress(ConfigError):  # invalid args fail the comparison below
                args = full_args(type(self), args)
        if state["arch"] != self.arch or args != self.args:
            raise CheckpointError(
                f"weights are for {state['arch']}{state['args']}, not {self.arch}{self.args}"
            )
        self.mean, self.std, self.meta = state["mean"], state["std"], dict(state["meta"])


def describe(state: Any) -> dict[str, Any]:
    """Check a `_extra_state` dict written by `DigitNet.get_extra_state` and return it."""
    if not isinstance(state, dict) or not {"format", *DESCRIPTION} <= state.keys():
        raise CheckpointError("the file's _extra_state is not an mnistcnn model description")
    if not isinstance(state["format"], int) or state["format"] > FORMAT_VERSION:
        raise CheckpointError(
            f"the file uses model format {state['format']}, newer than this mnistcnn "
            f"understands ({FORMAT_VERSION}); upgrade mnistcnn"
        )
    if state["arch"] not in MODELS:
        raise CheckpointError(
            f"unknown architecture {state['arch']!r}; known: {', '.join(sorted(MODELS))}"
        )
    return state


class Baseline(DigitNet):
    """The common PyTorch MNIST example: conv-conv-pool-dropout-fc-dropout-fc."""

    arch = "baseline"

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64),
        hidden: int = 128,
        dropout: tuple[float, ...] = (0.25, 0.5),
    ) -> None:
        super().__init__()
        if len(channels) != 2 or len(dropout) != 2:
            raise ConfigError("model: baseline takes exactly two channels and two dropout rates")
        _check_sizes([*channels, hidden], dropout)
        side = (IMAGE_SIZE - 4) // 2  # two valid 3x3 convs, then a 2x2 pool
        self.features = nn.Sequential(
            nn.Conv2d(1, channels[0], 3),  # (N, 32, 26, 26)
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3),  # (N, 64, 24, 24)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 64, 12, 12)
            nn.Dropout(dropout[0]),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(channels[1] * side * side, hidden),  # 9216 -> 128 with the defaults
            nn.ReLU(),
            nn.Dropout(dropout[1]),
            nn.Linear(hidden, NUM_CLASSES),
        )


class CNN(DigitNet):
    """The default: stages of conv blocks, 2x2 downsampling between them, GAP, dropout, linear.

    Options: docs/architectures.md. `batch_norm: false` spells `norm: none` in older files.
    """

    arch = "cnn"

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128),
        convs_per_stage: tuple[int, ...] = (2, 2, 1),
        kernel_size: int = 3,
        batch_norm: bool = True,
        dropout: float = 0.1,
        residual: bool = False,
        norm: str = "batch",
        attention: str = "none",
        pool: str = "max",
        activation: str = "relu",
        pool_before_norm: bool = False,
        stem: int = 0,
    ) -> None:
        super().__init__()
        if not channels or len(convs_per_stage) != len(channels) or min(convs_per_stage) < 1:
            raise ConfigError(
                "model: convs_per_stage needs one count >= 1 per entry of channels "
                f"(got channels={list(channels)}, convs_per_stage={list(convs_per_stage)})"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"model: kernel_size must be odd and positive, not {kernel_size}")
        _check_sizes(channels, [dropout])
        if stem < 0:
            raise ConfigError(f"model: stem must be >= 0 channels (0: no stem), not {stem}")
        if len(channels) > (4 if stem else 5):
            raise ConfigError(
                "model: at most 5 stages, 4 with a stem (each halves the 28-pixel side)"
            )
        choices = {"norm": norm, "attention": attention, "pool": pool, "activation": activation}
        for key, value in choices.items():
            if value not in CHOICES[key]:
                raise ConfigError(f"model.{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        if not batch_norm and norm not in ("batch", "none"):
            raise ConfigError(
                f"model: batch_norm: false contradicts norm: {norm}; set only model.norm"
            )
        if pool_before_norm and (pool == "strided" or residual):
            raise ConfigError(
                "model: pool_before_norm needs pool max or avg and no residual (a skip adds the "
                "unpooled input)"
            )
        se = attention in ("se", "both")
        spec = Spec(kernel_size, norm if batch_norm else "none", activation, residual, se)
        layers = [ConvBlock(1, stem, spec, stride=2)] if stem else []
        cin = stem or 1
        for i, (cout, convs) in enumerate(zip(channels, convs_per_stage, strict=True)):
            if i and pool != "strided" and not pool_before_norm:
                layers.append(POOL[pool](2))
            inner = POOL[pool](2) if pool_before_norm and i < len(channels) - 1 else None
            layers.append(Stage(cin, cout, convs, spec, 2 if i and pool == "strided" else 1, inner))
            cin = cout
        if attention in ("spatial", "both"):
            # After the last stage only: attention costs (H*W)^2 per image, 49^2 at 7x7 but
            # 784^2 at 28x28, and a 7x7 map's positions already each see most of the digit.
            layers.append(SpatialAttention(cin))
        self.features = nn.Sequential(*layers)  # 28 halved between stages, and once by a stem
        self.classifier = nn.Sequential(
            GlobalAvgPool(), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, NUM_CLASSES)
        )


MODELS: dict[str, type[DigitNet]] = {cls.arch: cls for cls in (Baseline, CNN)}


def full_args(cls: type[DigitNet], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with every default of `cls` filled in, tuples as lists (weights_only-safe)."""
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model: {exc}") from None
    bound.apply_defaults()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()}


def build_model(
    name: str, kwargs: dict[str, Any], mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> DigitNet:
    """Build a registered model; its full arguments (defaults included) are recorded."""
    if name not in MODELS:
        raise ConfigError(f"model: unknown name {name!r}; valid: {', '.join(sorted(MODELS))}")
    args = full_args(MODELS[name], kwargs)
    model = MODELS[name](**args)
    model.args = args
    model.mean, model.std = float(mean), float(std)
    return model


def model_from_state(state_dict: dict[str, Any]) -> DigitNet:
    """Rebuild a model from a state_dict carrying its `_extra_state` description."""
    if "_extra_state" not in state_dict:
        raise CheckpointError(
            "the file has no _extra_state model description (not saved by mnistcnn?)"
        )
    info = describe(state_dict["_extra_state"])
    try:
        model = build_model(info["arch"], info["args"], info["mean"], info["std"])
    except (ConfigError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the file's model description is invalid: {exc}") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(f"weights do not fit the {info['arch']} model: {detail}") from None
    return model
