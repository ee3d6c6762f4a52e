"""Open an image (a file or an upload's bytes) safely and bring it to the working size.

The pixel count is checked from the header before decoding; every mode becomes RGB.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mnistcnn.errors import ImageError

# More pixels are refused (a 12 MP phone photo is 12e6): a small file can declare a huge one.
MAX_PIXELS = 64_000_000
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale down to a long side of no less than this.
DRAFT_SIDE = 384
# Work at a long side of at most this: enough for a digit, fast on a 12 MP photo.
WORK_SIDE = 512
# Smaller images (an MNIST-sized PNG) are enlarged to this long side: every length in the
# pipeline, in pixels, then means the same whatever the input size.
MIN_SIDE = 256
# A picture is taken for enlarged blocks when, shrunk to them and enlarged back, it differs
# from itself by under this fraction of its range on average (JPEG's ringing: about 0.5 % in
# 9 of 10 generated scans, 2 % at most).
BLOCK_MISMATCH = 0.03


class EmptyImage(ImageError):
    """An empty file or upload."""


class NotAnImage(ImageError):
    """Bytes that Pillow does not recognise as an image."""


class ImageTooLarge(ImageError):
    """An image with more pixels than the decoder accepts."""


def open_image(
    source: str | Path | bytes, name: str = "upload", max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Decode a file or bytes (`name` in errors) within `max_pixels`, EXIF orientation applied."""
    if isinstance(source, bytes):
        if not source:
            raise EmptyImage(f"the upload is empty ({name})")
        fp: Path | io.BytesIO = io.BytesIO(source)
        label, at = name, f" ({name})"
    else:
        fp = path = Path(source)
        if not path.is_file():
            raise ImageError(f"not a file: {path}" if path.exists() else f"image not found: {path}")
        if path.stat().st_size == 0:
            raise EmptyImage(f"empty file: {path}")
        label, at = str(path), f": {path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            if img.width * img.height > max_pixels:
                size = f"{img.width}x{img.height} pixels (limit {max_pixels:,})"
                raise ImageTooLarge(f"image too large: {size}{at}")
            # JPEG: decode at the smallest 1/2^k scale that keeps the long side >= DRAFT_SIDE.
            reduce = max(1, max(img.size) // DRAFT_SIDE)
            img.draft("RGB", (max(1, img.width // reduce), max(1, img.height // reduce)))
            img.load()
            return ImageOps.exif_transpose(img)
    except Image.UnidentifiedImageError:
        raise NotAnImage(f"not an image, or a format Pillow cannot read{at}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image {label}: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageTooLarge(f"image too large to decode safely: {label} ({exc})") from None


def _resized(img: Image.Image, side: int, resample: Image.Resampling, **kw: float) -> Image.Image:
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, resample, **kw)


def _unblocked(img: Image.Image) -> Image.Image:
    """An image enlarged by repeating its pixels (blocks of 2 px or more) shrunk back to them."""
    grey = np.asarray(img.convert("L"), np.float32)
    gaps = []
    for axis in (1, 0):
        # Where the picture changes across a column (row): a third of its largest step or more,
        # above JPEG's ringing; inside a block it does not.
        steps = np.abs(np.diff(grey, axis=axis)).max(axis=1 - axis)
        gaps.append(np.diff(np.flatnonzero(steps > max(1.0, 0.3 * float(steps.max(initial=0))))))
    found = np.concatenate(gaps)
    if len(found) < 3 or found.min() < 2:
        return img
    # Every change lies a whole number of blocks from the last (to a pixel, and 2 % for a
    # block enlarged by a fraction), the block being the narrowest gap refined over them all.
    counts = np.round(found / found.min())
    block = float(found.sum() / counts.sum())
    if np.abs(found - counts * block).max() > 1 + 0.02 * found.max():
        return img
    size = (max(1, round(img.width / block)), max(1, round(img.height / block)))
    small = img.resize(size, Image.Resampling.BOX)
    # And the blocks, enlarged again, are the picture (JPEG's ringing aside).
    back = np.asarray(small.convert("L").resize(img.size, Image.Resampling.NEAREST), np.float32)
    if float(np.abs(back - grey).mean()) > BLOCK_MISMATCH * float(np.ptp(grey)):
        return img
    return small


def to_working(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB (uint8) at working size and, if the background is transparent, alpha in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((np.clip(arr / top, 0, 1) * 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    img = img.convert("RGBA" if "A" in img.getbands() or img.mode in ("PA", "RGBa") else "RGB")
    if max(img.size) > WORK_SIDE:
        img = _resized(img, WORK_SIDE, Image.Resampling.BOX, reducing_gap=2.0)
    img = _unblocked(img)
    if max(img.size) < MIN_SIDE:
        img = _resized(img, MIN_SIDE, Image.Resampling.BICUBIC)
    arr = np.asarray(img)
    if arr.shape[2] == 3:
        return arr, None
    alpha = arr[..., 3].astype(np.float32) / 255
    # A digit on a transparent background: whatever is opaque is ink, whatever its colour.
    if np.median(alpha[::4, ::4]) < 0.5:
        return arr[..., :3], alpha
    # Mostly opaque (a photo with transparent margins): see it on white paper.
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, img).convert("RGB")), None
