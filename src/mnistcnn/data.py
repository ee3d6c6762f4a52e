"""MNIST as in-memory uint8 tensors: loading, the seeded validation split, batches, augmentation.

The data set is read once by torchvision (which downloads it for online users), held as one uint8
tensor on the training device, shuffled by a seeded `randperm` through a `DataLoader`, and
converted and augmented a whole batch at a time with tensor ops: no per-sample PIL transforms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mnistcnn.config import AugmentConfig, DataConfig
from mnistcnn.errors import DataError

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one part of MNIST."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def _missing_message(root: Path, exc: BaseException) -> str:
    where = root / "MNIST" / "raw"
    return (
        f"MNIST not found in {where} and could not be downloaded ({type(exc).__name__}). "
        f"Put the four files {', '.join(RAW_FILES)} (or their .gz) there, "
        "or pass --data-dir to the folder that holds MNIST/raw/"
    )


def load_mnist(root: str | Path, train: bool, download: bool = True) -> Split:
    """The 60k training or 10k test images, read (and if needed downloaded) by torchvision."""
    from torchvision.datasets import MNIST

    root = Path(root).expanduser()
    raw = root / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    try:
        ds = MNIST(str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises bare RuntimeErrors for missing and corrupt files
        names = [f for f in RAW_FILES if f.startswith(prefix)]
        if not all((raw / name).is_file() for name in names):
            raise DataError(_missing_message(root, exc)) from None
        raise DataError(
            f"MNIST files {', '.join(names)} in {raw} are corrupt or truncated "
            f"({type(exc).__name__}: {exc}); delete them and download again"
        ) from None
    return Split(ds.data, ds.targets)


def split_train_val(train: Split, cfg: DataConfig) -> tuple[Split, Split]:
    """Carve a seeded validation split out of the training set; optionally subset the rest."""
    generator = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(len(train), generator=generator)
    val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.subset:
        train_idx = train_idx[: cfg.subset]
    return (
        Split(train.images[train_idx], train.labels[train_idx]),
        Split(train.images[val_idx], train.labels[val_idx]),
    )


class TensorDigits(Dataset):
    """A Split as a map-style Dataset whose batches are gathered by one indexing op."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.images[index], self.split.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader calls this with a whole batch of indices when it exists.
        index = torch.as_tensor(indices, device=self.split.labels.device)
        return self.split.images[index], self.split.labels[index]


def _keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def train_loader(split: Split, batch_size: int, generator: torch.Generator) -> DataLoader:
    """Shuffled batches (a seeded randperm each epoch) of (uint8 images, labels)."""
    return DataLoader(
        TensorDigits(split),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=_keep_batch,
    )


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, in large batches."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1], the models' input."""
    return images.unsqueeze(1).float().div_(255)


def random_affine(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rotate, scale and shift each image of a float batch (N, 1, H, W) by its own random draw."""
    n = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:  # U(-limit, limit), one draw per image
        rand = torch.rand(n, generator=generator, device=images.device)
        return (rand * 2 - 1) * limit

    angle = uniform(math.radians(cfg.degrees))
    zoom = 1 + uniform(cfg.scale)
    # affine_grid maps output to input coordinates in [-1, 1], so a shift of `translate` of the
    # side is 2 * translate there, and zooming in by `zoom` divides the sampling matrix by it.
    shift_x, shift_y = uniform(2 * cfg.translate), uniform(2 * cfg.translate)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )  # (N, 2, 3)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
