"""A person's image of a digit -> the 28x28 MNIST-style picture the model expects.

MNIST digits are white ink on black, the ink's bounding box scaled to fit 20x20 keeping its
aspect ratio, pasted into 28x28 with its centre of mass at the centre. A photo or scan is
turned into that: decode safely, find the ink (dark on light or light on dark), remove the
paper, crop to the digit, scale, centre. PIL, numpy and scipy.ndimage only: no torchvision.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from mnistcnn.errors import ImageError

# Decoding more than this many pixels is refused (a 12 MP phone photo is 12e6).
MAX_PIXELS = 64_000_000
# Work at this size at most: enough detail for a digit, and fast on a 12 MP photo.
WORK_SIDE = 512
# MNIST's digit box inside its 28x28 frame.
BOX = 20
SIDE = 28
# Below this ink contrast (in [0, 1]) the image is called blank rather than guessed at.
MIN_CONTRAST = 0.15


@dataclass(frozen=True)
class Preprocessed:
    """The 28x28 model input in [0, 1] (white ink on black) and where the digit was found."""

    image: np.ndarray
    box: tuple[int, int, int, int]  # left, top, right, bottom in the working image


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file safely (size limit, first frame, EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}" if not path.exists() else f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"empty file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"image too large: {img.width}x{img.height} pixels "
                    f"(limit {MAX_PIXELS:,}): {path}"
                )
            img.draft("RGB", (WORK_SIDE, WORK_SIDE))  # JPEG: decode at a reduced scale, fast
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image, or a format Pillow cannot read: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageError(f"image too large to decode safely: {path} ({exc})") from None
    return img


def _to_array(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance in [0, 1] and, if the image has real transparency, alpha in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(arr / top, 0, 1), None
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    alpha = None
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        a = np.asarray(img.getchannel("A"), dtype=np.float32) / 255
        if a.min() < 0.9:
            alpha = a
    gray = np.asarray(img.convert("L"), dtype=np.float32) / 255
    return gray, alpha


def ink_map(img: Image.Image) -> np.ndarray:
    """Ink strength in [0, 1] at working size: bright ink on a dark, flat background."""
    if max(img.size) > WORK_SIDE:
        img = img.copy()
        img.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    gray, alpha = _to_array(img)
    if alpha is not None:
        # A transparent background: whatever is opaque is ink, whatever its colour.
        return alpha
    low, high = np.percentile(gray, [1, 99])
    # The paper is most of the picture: if it is nearer the light end, the ink is dark.
    ink = 1 - gray if np.median(gray) > (low + high) / 2 else gray
    return np.clip(ink - np.median(ink), 0, None)


def _digit_mask(ink: np.ndarray) -> np.ndarray:
    """Pixels that belong to the digit: above an Otsu threshold, specks removed."""
    level = _otsu(ink)
    mask = ink > level
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return mask


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, float(values.max()) or 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    total = weight[-1]
    mean = np.cumsum(hist * centers)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1)
    return float(centers[np.argmax(between)])


def to_mnist(ink: np.ndarray) -> Preprocessed:
    """Crop the digit, fit it in a 20x20 box, paste it into 28x28 centred on its mass."""
    contrast = float(ink.max())
    if contrast < MIN_CONTRAST:
        raise ImageError("no digit found (the image is blank or has almost no contrast)")
    ink = ink / contrast
    mask = _digit_mask(ink)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    digit = np.where(ndimage.binary_dilation(mask, iterations=2), ink, 0)[top:bottom, left:right]
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray((digit * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    small_arr = np.asarray(small, dtype=np.float32) / 255
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    cy, cx = ndimage.center_of_mass(small_arr)
    y0 = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - size[1]))
    x0 = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - size[0]))
    canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = small_arr
    peak = canvas.max()
    return Preprocessed(
        np.clip(canvas / peak, 0, 1), (int(left), int(top), int(right), int(bottom))
    )


def preprocess(path: str | Path) -> Preprocessed:
    """Read an image file and return its MNIST-style 28x28 version."""
    img = open_image(path)
    try:
        return to_mnist(ink_map(img))
    except ImageError as exc:
        raise ImageError(f"{exc}: {path}") from None
