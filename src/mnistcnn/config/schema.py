"""The run configuration as frozen dataclasses, each checking its own values. The defaults
*are* the base recipe (`configs/base.yaml` spells the same values, with reasons)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mnistcnn.errors import ConfigError

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
FREEZE = ("none", "features")  # what `train.freeze` may stop training (see train/build.py)
KEEP = ("last", "best")  # which epoch's weights `train.keep` saves (see train/fitting.py)


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: a check on user input."""
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of whole training batches: a random affine, then photo-style ink redraws."""

    degrees: float = 10.0
    translate: float = 0.1
    scale: float = 0.1
    ink: float = 0.75  # share of images redrawn as thresholded ink (see data.redraw_ink)
    elastic: float = 0.0  # pixels a smooth random field may bend strokes by (0: none)
    lowres: float = 0.0  # share of images redrawn from a coarse copy (see data.coarsen)

    def __post_init__(self) -> None:
        check(0 <= self.degrees <= 180, "data.augment.degrees must be in [0, 180]")
        check(0 <= self.translate < 1, "data.augment.translate must be in [0, 1)")
        check(0 <= self.scale < 1, "data.augment.scale must be in [0, 1)")
        check(0 <= self.ink <= 1, "data.augment.ink must be in [0, 1]")
        check(0 <= self.elastic <= 4, "data.augment.elastic must be in [0, 4] pixels")
        check(0 <= self.lowres <= 1, "data.augment.lowres must be in [0, 1]")

    @property
    def affine(self) -> bool:
        return bool(self.degrees or self.translate or self.scale or self.elastic)

    @property
    def active(self) -> bool:
        return self.affine or bool(self.ink or self.lowres)


@dataclass(frozen=True)
class DataConfig:
    """Where MNIST lives and how it is split, batched, normalized and augmented."""

    root: str = "data"
    download: bool = True
    cache: bool = True
    val_size: int = 5000
    split_seed: int = 0
    subset: int = 0
    batch_size: int = 128
    eval_batch_size: int = 0
    mean: float = 0.1307
    std: float = 0.3081
    invert: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check(1 <= self.val_size < 60000, "data.val_size must be in [1, 59999]")
        check(self.subset >= 0, "data.subset must be >= 0 (0 = the whole training split)")
        check(self.batch_size >= 1, "data.batch_size must be >= 1")
        check(
            self.eval_batch_size >= 0,
            "data.eval_batch_size must be >= 0 (0 = sized to the CPU's caches, 1000 on a GPU)",
        )
        check(self.std > 0, "data.std must be > 0")
        check(
            not (self.invert and self.augment.active),
            "data.invert needs data.augment.degrees, translate, scale and ink at 0 (augmentation "
            "assumes a black background)",
        )


@dataclass(frozen=True)
class Component:
    """A thing chosen by name plus keyword arguments (a model, loss, optimizer or schedule)."""

    name: str | None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def _made(name: str, **kwargs: Any) -> Callable[[], Component]:
    """A default factory: Component(name, kwargs) with a fresh kwargs dict each time."""
    return lambda: Component(name, dict(kwargs))


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, seed, device and where the model and the run folder go."""

    epochs: int = 20
    seed: int = 0
    device: str = "auto"
    output: str = "models/cnn.pth"
    threads: int = 0
    amp: bool = True
    compile: bool = False
    cuda_graphs: bool = True
    channels_last: bool = True
    log_every: int = 50
    run_dir: str | None = "runs"
    run_name: str | None = None
    dist_timeout: float = 300.0
    init_from: str | None = None
    freeze: str = "none"
    keep: str = "last"
    precise_bn: int = 20000

    def __post_init__(self) -> None:
        check(self.freeze in FREEZE, f"train.freeze must be one of {', '.join(FREEZE)}")
        check(self.keep in KEEP, f"train.keep must be one of {', '.join(KEEP)}")
        check(self.precise_bn >= 0, "train.precise_bn must be >= 0 images (0 = off)")
        check(self.epochs >= 1, "train.epochs must be >= 1")
        check(self.dist_timeout > 0, "train.dist_timeout must be > 0 (seconds)")
        check(self.threads >= 0, "train.threads must be >= 0 (0 = torch's default)")
        check(self.log_every >= 1, "train.log_every must be >= 1")
        check(
            re.fullmatch(DEVICE_PATTERN, self.device) is not None,
            f"train.device must be auto, cpu, cuda, cuda:N or mps, not {self.device!r}",
        )
        check(self.output.endswith(".pth"), "train.output must end with .pth")
        check(
            self.run_name is None or re.fullmatch(r"[\w.-]+", self.run_name) is not None,
            f"train.run_name must be a folder name (letters, digits, . _ -), not {self.run_name!r}",
        )
        check(self.run_name not in (".", ".."), "train.run_name must not be . or ..")


@dataclass(frozen=True)
class Config:
    """A whole run. The defaults are the base recipe (see configs/base.yaml for the reasons)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: Component = field(default_factory=_made("cnn", channels=(32, 64, 128), dropout=0.1))
    loss: Component = field(default_factory=_made("CrossEntropyLoss", label_smoothing=0.1))
    optim: Component = field(
        default_factory=_made("SGD", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    )
    sched: Component = field(default_factory=_made("OneCycleLR", max_lr=0.1, pct_start=0.2))
    train: TrainConfig = field(default_factory=TrainConfig)
