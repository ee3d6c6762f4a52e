"""MNIST as in-memory uint8 tensors: loading (torchvision once, then a tensor cache), the seeded
validation split, batches by seeded `randperm`, and augmentation of whole batches by tensor ops."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Generator, Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from mnistcnn.config.schema import AugmentConfig, DataConfig
from mnistcnn.errors import DataError
from mnistcnn.files import atomic_write

# md5 of the original uncompressed files: anything else is not MNIST, or is damaged.
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
RAW_FILES = tuple(OFFICIAL_MD5)
# redraw_ink: thresholds as a share of each image's peak (0.2 keeps faint strokes and thickens,
# 0.7 drops them and thins), and the blur of the copy that draws a marker's thicker strokes.
INK_LEVELS = (0.2, 0.7)
INK_BLUR = 0.8
# coarsen: the 28 px frame redrawn from these sides (a digit of 8-16 px in a scan).
COARSE_SIDES = (11, 14, 18, 22)


def default_cache_dir() -> Path:
    """Where decoded tensors are cached: $MNISTCNN_CACHE, else ~/.cache/mnistcnn."""
    env = os.environ.get("MNISTCNN_CACHE")
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(env) if env else Path(base) / "mnistcnn"


@dataclass(frozen=True)
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one part of MNIST."""

    images: Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


class Splits(NamedTuple):
    """The three parts a run uses: training, validation (carved from MNIST's train) and test."""

    train: Split
    val: Split
    test: Split


def _verified(raw: Path, names: list[str]) -> str | None:
    """The files' combined checksum if all are present; a DataError if one is not MNIST."""
    if not all((raw / name).is_file() for name in names):
        return None
    for name in names:
        digest = hashlib.md5((raw / name).read_bytes(), usedforsecurity=False).hexdigest()
        if digest != OFFICIAL_MD5[name]:
            raise DataError(
                f"{raw / name} is not the original MNIST file (its md5 differs: truncated or "
                "corrupt?); delete it and download again, or copy a good one there"
            )
    return OFFICIAL_MD5[names[0]][:12]


def _decode(root: Path, train: bool, download: bool, names: list[str]) -> Split:
    """Read (and if needed download) the IDX files with torchvision."""
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises bare RuntimeErrors for missing and corrupt files
        raw = root / "MNIST" / "raw"
        if all((raw / name).is_file() for name in names):
            raise DataError(
                f"MNIST files {', '.join(names)} in {raw} cannot be read "
                f"({type(exc).__name__}: {exc}); delete them and download again"
            ) from None
        files = f"the four files {', '.join(RAW_FILES)}"
        if download:
            found = f"not found in {raw} and could not be downloaded ({type(exc).__name__})"
            put = f"Put {files} (or their .gz) there"
        else:  # torchvision unpacks .gz files only on its download path
            found = f"not found in {raw} (download is off)"
            put = f"Put {files} there uncompressed, or allow the download (it also unpacks .gz)"
        message = f"MNIST {found}. {put}, or pass --data-dir to the folder that holds MNIST/raw/"
        raise DataError(message) from None
    return Split(ds.data, ds.targets)


def load_mnist(
    root: str | Path, train: bool, download: bool = True, cache: Path | None = None
) -> Split:
    """The 60k training or 10k test images, md5-checked, cached in `cache` (None: no cache)."""
    root = Path(root).expanduser()
    raw = root / "MNIST" / "raw"
    names = [name for name in RAW_FILES if name.startswith("train" if train else "t10k")]
    checksum = _verified(raw, names)
    cached = cache / f"mnist-{names[0][:5]}-{checksum}.pt" if cache and checksum else None
    if cached is not None and cached.is_file():
        try:
            return Split(**torch.load(cached, weights_only=True))
        except Exception:  # a damaged cache is rebuilt, never trusted
            cached.unlink(missing_ok=True)
    split = _decode(root, train, download, names)
    checksum = checksum or _verified(raw, names)
    if cache is not None:
        tensors = {"images": split.images, "labels": split.labels}
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            path = cache / f"mnist-{names[0][:5]}-{checksum}.pt"
            atomic_write(path, lambda f: torch.save(tensors, f))
    return split


def split_train_val(train: Split, cfg: DataConfig) -> tuple[Split, Split]:
    """Carve a seeded validation split out of the training set; optionally subset the rest."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.subset:
        train_idx = train_idx[: cfg.subset]
    train_part = Split(train.images[train_idx], train.labels[train_idx])
    return train_part, Split(train.images[val_idx], train.labels[val_idx])


def splits_of(train: Split, test: Split, cfg: DataConfig) -> Splits:
    """MNIST's training and test sets as `cfg` splits them (validation, subset, invert)."""
    splits = Splits(*split_train_val(train, cfg), test)
    return Splits(*map(invert, splits)) if cfg.invert else splits


def load_splits(cfg: DataConfig) -> Splits:
    """Load MNIST as `cfg` says (root, download, cache) and split it."""
    cache = default_cache_dir() if cfg.cache else None
    train, test = (load_mnist(cfg.root, part, cfg.download, cache) for part in (True, False))
    return splits_of(train, test, cfg)


class TensorDigits(Dataset):
    """A Split as a map-style Dataset whose batches are gathered by one indexing op."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.split.images[index], self.split.labels[index]

    def __getitems__(self, indices: list[int] | Tensor) -> tuple[Tensor, Tensor]:
        # DataLoader calls this with a whole batch of indices when it exists.
        index = torch.as_tensor(indices, device=self.split.labels.device)
        return self.split.images[index], self.split.labels[index]


class DeviceBatches(Sampler[Tensor]):
    """A sampler's epoch of indices, copied to `device` once and cut into batches."""

    # A list of ints would be copied to the device at every step, and on CUDA a copy from
    # pageable memory waits for the GPU's queue to drain: the host could never run ahead.

    def __init__(self, sampler: Sampler[int], batch_size: int, device: torch.device) -> None:
        self.sampler, self.batch_size, self.device = sampler, batch_size, device

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Tensor]:
        yield from torch.tensor(list(self.sampler), device=self.device).split(self.batch_size)


def _keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


def _loader(
    split: Split, sampler: Sampler[int], batch_size: int, generator: Generator | None = None
) -> DataLoader:
    batches = DeviceBatches(sampler, batch_size, split.labels.device)
    digits = TensorDigits(split)
    return DataLoader(digits, batch_sampler=batches, generator=generator, collate_fn=_keep_batch)


def train_loader(split: Split, batch_size: int, generator: Generator) -> DataLoader:
    """Shuffled batches (a seeded randperm each epoch) of (uint8 images, labels)."""
    return _loader(split, RandomSampler(split, generator=generator), batch_size, generator)


def shard_loader(split: Split, batch_size: int, seed: int, rank: int, ranks: int) -> DataLoader:
    """This process's shard of each epoch (`loader.batch_sampler.sampler.set_epoch(epoch)`)."""
    # Every process draws the same permutation and takes every `ranks`-th index from `rank` on:
    # the shards are disjoint, their k-th batches together one global batch; the last
    # `len(split) % ranks` images of each permutation are left out.
    sampler = DistributedSampler(split, ranks, rank, shuffle=True, seed=seed, drop_last=True)
    return _loader(split, sampler, batch_size)


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The split in order, in large batches."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]


def invert(split: Split) -> Split:
    """Dark digits on a white background (`data.invert`): a shifted task for transfer learning."""
    return Split(255 - split.images, split.labels)


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1], the models' input."""
    return images.unsqueeze(1).float().div_(255)


def random_affine(images: Tensor, cfg: AugmentConfig, generator: Generator | None = None) -> Tensor:
    """Rotate, scale and shift each image of a float batch (N, 1, H, W) by its own random draw."""
    n = images.shape[0]

    def uniform(limit: float) -> Tensor:  # U(-limit, limit), one draw per image
        rand = torch.rand(n, generator=generator, device=images.device)
        return (rand * 2 - 1) * limit

    angle = uniform(math.radians(cfg.degrees))
    zoom = 1 + uniform(cfg.scale)
    # affine_grid maps output to input coordinates in [-1, 1], so a shift of `translate` of the
    # side is 2 * translate there, and zooming in by `zoom` divides the sampling matrix by it.
    shift_x, shift_y = uniform(2 * cfg.translate), uniform(2 * cfg.translate)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # The grid affine_grid would build, by broadcasting: its batched matmul with an inner size
    # of 3 costs more than the sampling. Pixel centres, align_corners=False: (2k + 1) / side - 1.
    h, w = images.shape[-2:]
    xs = (torch.arange(w, device=images.device) * 2 + 1) / w - 1  # (W,)
    ys = ((torch.arange(h, device=images.device) * 2 + 1) / h - 1)[:, None]  # (H, 1)

    def coordinate(a: torch.Tensor, b: torch.Tensor, shift: torch.Tensor) -> Tensor:
        return a[:, None, None] * xs + b[:, None, None] * ys + shift[:, None, None]  # (N, H, W)

    grid = torch.stack([coordinate(cos, -sin, shift_x), coordinate(sin, cos, shift_y)], -1)
    if cfg.elastic:
        grid = grid + _warp(n, h, w, cfg.elastic, generator, images.device)
    return F.grid_sample(images, grid.to(images.dtype), align_corners=False, padding_mode="zeros")


def _warp(
    n: int, h: int, w: int, pixels: float, generator: Generator | None, device: torch.device
) -> Tensor:
    """A smooth random displacement (N, H, W, 2) of up to `pixels`, in grid units: each image's
    strokes bent a little differently, as another hand would draw them (an elastic distortion)."""
    coarse = torch.rand(n, 2, 4, 4, generator=generator, device=device) * 2 - 1
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    scale = torch.tensor([2 * pixels / w, 2 * pixels / h], device=device)
    return field.permute(0, 2, 3, 1) * scale


def _blur(images: Tensor) -> Tensor:
    """5x5 Gaussian blur of sigma INK_BLUR, mirrored edges: torchvision's `gaussian_blur`."""
    # Written out, bit for bit, so that training never imports torchvision.transforms (slow).
    spread = 2 / math.sqrt(2.0)  # torchvision's grid: 5 points at unit spacing / sqrt(2)
    x = torch.linspace(-spread, spread, steps=5, dtype=images.dtype, device=images.device)
    weights = torch.softmax(x.div(INK_BLUR).pow(2).neg(), dim=0)
    kernel = (weights.unsqueeze(-1) * weights).expand(1, 1, 5, 5)
    return F.conv2d(F.pad(images, [2, 2, 2, 2], mode="reflect"), kernel)


def redraw_ink(images: Tensor, share: float, generator: Generator | None = None) -> Tensor:
    """Redraw a random `share` of a float batch (N, 1, H, W) the way `predict` draws a photo."""
    # A photographed digit reaches the model as ink thresholded off the paper: faint strokes
    # gone, thinner or thicker than MNIST's pen, full bright. Each chosen image (or a blurred
    # copy: a marker) is cut at a random level of its peak at 4x and averaged back down.
    n = images.shape[0]

    def draw() -> Tensor:  # U(0, 1), one per image
        return torch.rand(n, 1, 1, 1, generator=generator, device=images.device)

    thick = draw() < 0.5
    level = INK_LEVELS[0] + (INK_LEVELS[1] - INK_LEVELS[0]) * draw()
    chosen = draw() < share
    source = torch.where(thick, _blur(images), images)
    peak = source.amax((2, 3), keepdim=True)
    fine = F.interpolate(source, scale_factor=4, mode="bilinear", align_corners=False)
    shape = F.avg_pool2d((fine > level * peak).to(images.dtype), 4)
    shape = shape / shape.amax((2, 3), keepdim=True).clamp_min(1e-3)
    return torch.where(chosen, shape, images)


def coarsen(images: Tensor, share: float, generator: Generator | None = None) -> Tensor:
    """Redraw a random `share` of a float batch (N, 1, 28, 28) from a coarse copy, as a digit
    scanned at a few pixels reaches the model: averaged down, then enlarged back smoothly."""
    # Every coarse side is made for the whole batch and each image takes one (no host sync: a
    # CUDA graph can replay it). MNIST's digit fills 20 of the 28 px, so the 28 px frame at 11-22
    # px holds a digit 8-16 px tall: the low resolutions photos are read from.
    n, _, height, width = images.shape
    pick = torch.randint(len(COARSE_SIDES), (n, 1, 1, 1), generator=generator, device=images.device)
    chosen = torch.rand(n, 1, 1, 1, generator=generator, device=images.device) < share
    out = images
    for index, side in enumerate(COARSE_SIDES):
        low = F.interpolate(images, size=(side, side), mode="area")
        back = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
        out = torch.where(chosen & (pick == index), back, out)
    return out


def augment_batch(images: Tensor, cfg: AugmentConfig, generator: Generator | None = None) -> Tensor:
    """The training augmentation of a float batch: `random_affine`, `coarsen`, `redraw_ink`."""
    if cfg.affine:
        images = random_affine(images, cfg, generator)
    if cfg.lowres:
        images = coarsen(images, cfg.lowres, generator)
    if cfg.ink:
        images = redraw_ink(images, cfg.ink, generator)
    return images
