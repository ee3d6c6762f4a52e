"""MNIST loading (real files, missing, corrupt, cached), the seeded split, batches, augmentation."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mnistcnn import data
from mnistcnn.config.schema import AugmentConfig, DataConfig
from mnistcnn.data import (
    COARSE_SIDES,
    RAW_FILES,
    Split,
    TensorDigits,
    augment_batch,
    coarsen,
    default_cache_dir,
    eval_batches,
    load_mnist,
    random_affine,
    redraw_ink,
    split_train_val,
    to_float,
    train_loader,
)
from mnistcnn.errors import ConfigError, DataError


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, whatever machine this runs on: a download attempt fails at once."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(-2, "Name or service not known (tests are offline)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def copy_raw(data_dir: Path, dest: Path, names: list[str]) -> Path:
    """A writable copy of some of the raw IDX files; returns the copy's MNIST/raw folder."""
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in names:
        shutil.copy(data_dir / "MNIST" / "raw" / name, raw / name)
    return raw


TEST_FILES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# --- the real files ------------------------------------------------------------------------


def test_training_set(mnist_train: Split) -> None:
    assert mnist_train.images.shape == (60000, 28, 28)
    assert mnist_train.images.dtype == torch.uint8
    assert mnist_train.labels.shape == (60000,)
    assert mnist_train.labels.dtype == torch.int64
    assert int(mnist_train.labels[0]) == 5  # MNIST's first training digit is a 5
    assert torch.bincount(mnist_train.labels).tolist()[:2] == [5923, 6742]


def test_test_set(mnist_test: Split) -> None:
    assert mnist_test.images.shape == (10000, 28, 28)
    assert mnist_test.images.dtype == torch.uint8
    assert len(mnist_test) == 10000
    assert int(mnist_test.labels[0]) == 7  # and its first test digit a 7
    assert set(mnist_test.labels.tolist()) == set(range(10))
    assert int(mnist_test.images.max()) == 255 and int(mnist_test.images.min()) == 0


def test_load_with_download_true_uses_the_files_present(data_dir: Path, offline: None) -> None:
    assert len(load_mnist(data_dir, train=False, download=True)) == 10000


def test_cache_is_written_and_then_used(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_test: Split
) -> None:
    cache = tmp_path / "cache"
    first = load_mnist(data_dir, train=False, download=False, cache=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mnist-t10k-")

    def no_torchvision(*args: Any, **kwargs: Any) -> Split:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode", no_torchvision)
    second = load_mnist(data_dir, train=False, download=False, cache=cache)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert torch.equal(second.images, mnist_test.images)


def test_damaged_cache_is_rebuilt(data_dir: Path, tmp_path: Path, mnist_test: Split) -> None:
    cache = tmp_path / "cache"
    load_mnist(data_dir, train=False, download=False, cache=cache)
    (cached,) = cache.iterdir()
    cached.write_bytes(cached.read_bytes()[:1000])
    split = load_mnist(data_dir, train=False, download=False, cache=cache)
    assert torch.equal(split.labels, mnist_test.labels)
    assert cached.stat().st_size > 1000  # written again


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MNISTCNN_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MNISTCNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mnistcnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mnistcnn"


# --- missing and damaged files -------------------------------------------------------------


@pytest.mark.parametrize("download", [False, True])
def test_missing_data_says_where_to_put_the_files(
    tmp_path: Path, download: bool, offline: None
) -> None:
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path / "nowhere", train=True, download=download)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert all(name in message for name in RAW_FILES)
    assert "--data-dir" in message
    # .gz files are unpacked only on torchvision's download path: said only when it is on.
    assert ("(or their .gz)" in message) is download
    assert ("download is off" in message) is not download


def test_one_missing_file_is_missing_data(data_dir: Path, tmp_path: Path) -> None:
    copy_raw(data_dir, tmp_path, TEST_FILES[:1])
    with pytest.raises(DataError, match="MNIST not found"):
        load_mnist(tmp_path, train=False, download=False)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_idx_file(data_dir: Path, tmp_path: Path, damage: str) -> None:
    raw = copy_raw(data_dir, tmp_path, TEST_FILES)
    images = raw / TEST_FILES[0]
    content = bytearray(images.read_bytes())
    if damage == "truncate":
        content = content[: len(content) // 3]
    elif damage == "flip":
        content[5000] ^= 0xFF
    else:
        content = bytearray()
    images.write_bytes(bytes(content))
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, train=False, download=False, cache=tmp_path / "cache")
    assert TEST_FILES[0] in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_damaged_labels_with_download_true(data_dir: Path, tmp_path: Path, offline: None) -> None:
    raw = copy_raw(data_dir, tmp_path, TEST_FILES)
    labels = raw / TEST_FILES[1]
    labels.write_bytes(labels.read_bytes()[:-10])
    with pytest.raises(DataError, match=TEST_FILES[1]):
        load_mnist(tmp_path, train=False, download=True)


def test_gz_files_alone_are_enough_to_decompress(
    data_dir: Path, tmp_path: Path, offline: None, mnist_test: Split
) -> None:
    # The missing-data message says the .gz files will do (torchvision extracts them).
    copy_raw(data_dir, tmp_path, [f"{name}.gz" for name in RAW_FILES])
    split = load_mnist(tmp_path, train=False, download=True)
    assert torch.equal(split.images, mnist_test.images)


# --- the validation split ------------------------------------------------------------------


def indexed(n: int) -> Split:
    """A fake split whose labels are the image indices, to see where each image went."""
    return Split(torch.zeros(n, 28, 28, dtype=torch.uint8), torch.arange(n))


def test_split_is_disjoint_and_complete() -> None:
    train, val = split_train_val(indexed(1000), DataConfig(val_size=100))
    assert len(val) == 100 and len(train) == 900
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert set(train.labels.tolist()) | set(val.labels.tolist()) == set(range(1000))


def test_split_is_seeded() -> None:
    a = split_train_val(indexed(1000), DataConfig(val_size=100, split_seed=3))
    b = split_train_val(indexed(1000), DataConfig(val_size=100, split_seed=3))
    c = split_train_val(indexed(1000), DataConfig(val_size=100, split_seed=4))
    assert torch.equal(a[1].labels, b[1].labels) and torch.equal(a[0].labels, b[0].labels)
    assert not torch.equal(a[1].labels, c[1].labels)
    # shuffled, not the first 100
    assert a[1].labels.tolist() != list(range(100))


def test_subset_takes_from_the_training_part_only() -> None:
    full_train, full_val = split_train_val(indexed(1000), DataConfig(val_size=100))
    train, val = split_train_val(indexed(1000), DataConfig(val_size=100, subset=50))
    assert len(train) == 50
    assert torch.equal(val.labels, full_val.labels)  # the same validation images
    assert torch.equal(train.labels, full_train.labels[:50])


def test_real_split_keeps_images_with_their_labels(mnist_train: Split) -> None:
    train, val = split_train_val(mnist_train, DataConfig(val_size=5000, subset=100))
    for split in (train, val):
        for image, label in zip(split.images[:5], split.labels[:5], strict=True):
            matches = (mnist_train.images == image).flatten(1).all(1).nonzero().flatten()
            assert int(label) in mnist_train.labels[matches].tolist()


# --- batches -------------------------------------------------------------------------------


def test_getitems_is_getitem_batched() -> None:
    split = Split(torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8), torch.arange(20) % 10)
    ds = TensorDigits(split)
    images, labels = ds.__getitems__([3, 0, 7])
    assert len(ds) == 20
    for row, i in enumerate([3, 0, 7]):
        image, label = ds[i]
        assert torch.equal(images[row], image) and int(labels[row]) == int(label)


def epoch_of(split: Split, seed: int, batch_size: int = 32) -> list[torch.Tensor]:
    return [
        labels for _, labels in train_loader(split, batch_size, torch.Generator().manual_seed(seed))
    ]


def test_loader_batches_are_seeded_and_cover_every_image_once() -> None:
    split = indexed(100)
    a, b, c = epoch_of(split, 0), epoch_of(split, 0), epoch_of(split, 1)
    assert [len(x) for x in a] == [32, 32, 32, 4]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert sorted(torch.cat(a).tolist()) == list(range(100))


def test_loader_batches_are_the_plain_dataloaders_as_index_tensors_on_the_datas_device() -> None:
    # The same batches, and the same draws from the generator, as a shuffled DataLoader of
    # lists; but each epoch's order goes to the data's device once (per step on CUDA, a copy
    # from a list waits for the GPU), so the batches' indices are tensors there already.
    split = indexed(100)
    plain = DataLoader(
        TensorDigits(split), 32, shuffle=True, generator=torch.Generator(), collate_fn=lambda b: b
    )
    ours = train_loader(split, 32, torch.Generator())
    for loader in (plain, ours):
        assert loader.generator is not None
        loader.generator.manual_seed(5)
    for _ in range(2):  # epochs
        got = [labels for _, labels in ours]
        assert all(torch.equal(x, y) for x, y in zip(got, [y for _, y in plain], strict=True))
    assert torch.equal(ours.generator.get_state(), plain.generator.get_state())
    batches = list(ours.batch_sampler)
    assert all(isinstance(b, torch.Tensor) and b.device == split.labels.device for b in batches)


def test_loader_yields_uint8_images_with_their_labels(mnist_test: Split) -> None:
    split = Split(mnist_test.images[:64], mnist_test.labels[:64])
    loader = train_loader(split, 16, torch.Generator().manual_seed(0))
    images, labels = next(iter(loader))
    assert images.shape == (16, 28, 28) and images.dtype == torch.uint8
    for image, label in zip(images, labels, strict=True):
        (i,) = (split.images == image).flatten(1).all(1).nonzero().flatten().tolist()[:1]
        assert int(split.labels[i]) == int(label)


def test_each_epoch_is_shuffled_differently() -> None:
    loader = train_loader(indexed(100), 100, torch.Generator().manual_seed(0))
    first, second = (labels for _, labels in [next(iter(loader)), next(iter(loader))])
    assert not torch.equal(first, second)


def test_eval_batches_in_order() -> None:
    split = indexed(25)
    batches = list(eval_batches(split, 10))
    assert [len(labels) for _, labels in batches] == [10, 10, 5]
    assert torch.cat([labels for _, labels in batches]).tolist() == list(range(25))


def test_to_float() -> None:
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    out = to_float(images)
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0, 0.2, 0.4])


# --- augmentation --------------------------------------------------------------------------


def test_random_affine_keeps_the_shape(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:8])
    out = random_affine(images, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not torch.allclose(out, images)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6


def test_random_affine_with_zero_parameters_is_the_identity(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:8])
    out = random_affine(images, AugmentConfig(degrees=0, translate=0, scale=0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_random_affine_is_seeded(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:8])
    cfg = AugmentConfig(degrees=30, translate=0.2, scale=0.2)
    a = random_affine(images, cfg, torch.Generator().manual_seed(5))
    b = random_affine(images, cfg, torch.Generator().manual_seed(5))
    c = random_affine(images, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_affine_translation_moves_ink_by_at_most_the_limit(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:64])
    shifted = random_affine(
        images, AugmentConfig(degrees=0, translate=0.1, scale=0), torch.Generator().manual_seed(0)
    )

    def centre_x(batch: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(28, dtype=torch.float32)
        return (batch.sum(2).squeeze(1) * cols).sum(1) / batch.sum((1, 2, 3))

    moved = (centre_x(shifted) - centre_x(images)).abs()
    assert moved.max() <= 0.1 * 28 + 0.5  # at most 10 % of the side (2.8 px)
    assert moved.mean() > 0.3  # and it does move


def test_elastic_bends_each_image_differently_by_at_most_about_the_pixels_asked(
    mnist_test: Split,
) -> None:
    images = to_float(mnist_test.images[:64])
    cfg = AugmentConfig(degrees=0, translate=0, scale=0, ink=0, elastic=1.5)
    assert cfg.affine and cfg.active
    bent = random_affine(images, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(bent, random_affine(images, cfg, torch.Generator().manual_seed(0)))
    assert not torch.allclose(bent, images, atol=0.05)
    field = data._warp(64, 28, 28, 1.5, torch.Generator().manual_seed(0), images.device)
    assert field.shape == (64, 28, 28, 2)
    pixels = field * 28 / 2  # grid units -> pixels
    assert pixels.abs().max() <= 1.5 + 1e-6
    assert pixels.abs().mean() > 0.2
    # Smooth: neighbouring pixels move almost alike; the ink stays about where it was.
    assert (pixels[:, 1:] - pixels[:, :-1]).abs().max() < 0.5
    mass = bent.sum((1, 2, 3)) / images.sum((1, 2, 3))
    assert ((mass - 1).abs() < 0.25).all()
    with pytest.raises(ConfigError, match=r"data\.augment\.elastic"):
        AugmentConfig(elastic=5)


def test_redraw_ink_draws_full_bright_shapes_thinner_and_thicker(mnist_test: Split) -> None:
    digit = to_float(mnist_test.images[:1])
    out = redraw_ink(digit.expand(256, -1, -1, -1), 1.0, torch.Generator().manual_seed(0))
    assert out.shape == (256, 1, 28, 28) and out.min() >= 0
    assert torch.allclose(out.amax((1, 2, 3)), torch.ones(256))  # predict's digits peak at 1
    mass = out.sum((1, 2, 3)) / digit.sum()
    assert mass.min() < 0.8 and mass.max() > 1.6  # high cuts: thinner; low, blurred: thicker
    ink = out.flatten(1)[:, digit.flatten() > 0.9]  # where MNIST's pen was solid
    assert ink.mean() > 0.95  # the stroke's core stays ink whatever the cut


def test_redraw_ink_brings_a_hairline_to_full_brightness() -> None:
    line = torch.zeros(64, 1, 28, 28)
    line[:, 0, torch.arange(4, 24), torch.arange(4, 24)] = 1.0  # no 4x4 block of it is all ink
    out = redraw_ink(line, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(out.amax((1, 2, 3)), torch.ones(64))


def test_the_ink_blur_is_torchvisions_without_importing_it(mnist_test: Split) -> None:
    from torchvision.transforms.v2.functional import gaussian_blur

    images = to_float(mnist_test.images[:256])
    assert torch.equal(data._blur(images), gaussian_blur(images, [5, 5], [data.INK_BLUR] * 2))
    code = "import sys, mnistcnn.train; print('torchvision' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]  # training start-up skips it


def test_redraw_ink_loses_faint_strokes_in_some_draws_only() -> None:
    images = torch.zeros(256, 1, 28, 28)
    images[:, :, 4:24, 8:11] = 1.0  # a strong stroke
    images[:, :, 4:24, 18:21] = 0.35  # a faint one: kept by cuts under 0.35, lost above
    out = redraw_ink(images, 1.0, torch.Generator().manual_seed(0))
    assert (out[:, :, 8:20, 9] == 1).all()
    faint = out[:, 0, 8:20, 19].amax(1)
    assert 0.05 < (faint == 0).float().mean() < 0.95 and (faint == 1).any()


def test_redraw_ink_redraws_its_share_and_is_seeded(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:512])
    out = redraw_ink(images, 0.5, torch.Generator().manual_seed(3))
    changed = (out != images).flatten(1).any(1).float().mean()
    assert 0.4 < changed < 0.6
    assert torch.equal(out, redraw_ink(images, 0.5, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, redraw_ink(images, 0.5, torch.Generator().manual_seed(4)))
    assert torch.equal(redraw_ink(images, 0.0), images)


def test_augment_batch_runs_each_part_only_when_asked(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:64])
    off = AugmentConfig(degrees=0, translate=0, scale=0, ink=0)
    assert not off.active and torch.equal(augment_batch(images, off), images)
    ink_only = AugmentConfig(degrees=0, translate=0, scale=0, ink=1)
    assert ink_only.active and not ink_only.affine
    redrawn = augment_batch(images, ink_only, torch.Generator().manual_seed(0))
    assert torch.equal(redrawn, redraw_ink(images, 1, torch.Generator().manual_seed(0)))
    affine_only = AugmentConfig(ink=0)
    moved = augment_batch(images, affine_only, torch.Generator().manual_seed(0))
    assert torch.equal(moved, random_affine(images, affine_only, torch.Generator().manual_seed(0)))


def centre(image: torch.Tensor) -> torch.Tensor:
    """The (row, column) centre of mass of a (1, H, W) image, in pixels."""
    rows, cols = torch.meshgrid(
        *(torch.arange(n, dtype=image.dtype) for n in image.shape[1:]), indexing="ij"
    )
    return torch.stack([(rows * image[0]).sum(), (cols * image[0]).sum()]) / image.sum()


def test_coarsen_redraws_its_share_from_one_of_the_coarse_sides(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:256])
    out = coarsen(images, 0.5, torch.Generator().manual_seed(3))
    changed = (out != images).flatten(1).any(1)
    assert 0.4 < changed.float().mean() < 0.6
    candidates = [
        F.interpolate(
            F.interpolate(images, size=(side, side), mode="area"), size=(28, 28), mode="bilinear"
        )
        for side in COARSE_SIDES
    ]
    used = set()
    for i in changed.nonzero().flatten().tolist():
        (side,) = [
            s for s, c in zip(COARSE_SIDES, candidates, strict=True) if torch.equal(out[i], c[i])
        ]
        used.add(side)
        # Averaged down and enlarged back: the ink is blurred, not moved.
        assert out[i].max() <= images[i].max()
        assert torch.allclose(centre(out[i]), centre(images[i]), atol=1.0)
    assert used == set(COARSE_SIDES)
    assert torch.equal(out, coarsen(images, 0.5, torch.Generator().manual_seed(3)))
    assert torch.equal(coarsen(images, 0.0), images)


def test_augment_batch_coarsens_before_the_ink_redraw(mnist_test: Split) -> None:
    images = to_float(mnist_test.images[:64])
    lowres = AugmentConfig(degrees=0, translate=0, scale=0, ink=1, lowres=1)
    assert lowres.active and not lowres.affine
    out = augment_batch(images, lowres, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    expected = redraw_ink(coarsen(images, 1, generator), 1, generator)
    assert torch.equal(out, expected)
