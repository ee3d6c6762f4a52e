"""Redraw a digit's ink the way MNIST's were drawn: a clean shape of MNIST's stroke width,
scaled into a 20x20 box with anti-aliased edges, its centre of mass at the centre of 28x28.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from mnistcnn.photo.ink import INK_LEVEL

# MNIST's digit box inside its 28x28 frame.
BOX = 20
SIDE = 28
# MNIST stroke width / digit box, 5th to 95th percentile of the test set is 0.085-0.2: thinner
# (fine pen) or thicker (marker) strokes are brought into this range.
STROKE_RANGE = (0.09, 0.18)
# A digit is redrawn from its mask at no less than this long side (in pixels) before scaling down.
CROP_SIDE = 96


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the outline's length."""
    outline = mask & ~ndimage.binary_erosion(mask)
    return 2 * float(mask.sum()) / max(1.0, float(outline.sum()))


def _fill_specks(mask: np.ndarray, size: int) -> np.ndarray:
    """Fill holes smaller than `size` pixels (chalk grain, a pen's skip), not a digit's loops."""
    holes, count = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if count == 0:
        return mask
    areas = ndimage.sum_labels(np.ones_like(mask), holes, np.arange(1, count + 1))
    small = np.concatenate([[False], areas < size])
    return mask | small[holes]


def redraw(ink: np.ndarray, keep: np.ndarray, peak: float) -> np.ndarray:
    """The digit as a clean shape (float in [0, 1]) at >= CROP_SIDE px, MNIST stroke width."""
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad = 2
    # Thresholded at half the stroke's contrast after enlarging: edges stay smooth.
    level = INK_LEVEL * min(peak, float(ink[keep].max()))
    crop = np.where(ndimage.binary_dilation(keep, iterations=2), ink, 0)
    crop = np.pad(crop[top:bottom, left:right], pad)
    zoom = max(1.0, CROP_SIDE / max(crop.shape))
    if zoom > 1:
        crop = ndimage.zoom(crop, zoom, order=1)
    shape = crop > level
    side = max(shape.shape) - 2 * pad * zoom
    shape = _fill_specks(shape, max(4, round(0.003 * side * side)))
    width = _stroke_width(shape)
    target = float(np.clip(width / side, *STROKE_RANGE)) * side
    if abs(target - width) < 1:
        return shape.astype(np.float32)
    # Grow or shrink by half the difference on each side, along the signed distance.
    grow = (target - width) / 2
    margin = math.ceil(max(grow, 0)) + 1
    shape = np.pad(shape, margin)
    inside = ndimage.distance_transform_edt(shape)
    outside = ndimage.distance_transform_edt(~shape)
    return np.clip(0.5 + inside - outside + grow, 0, 1).astype(np.float32)


def to_28(shape: np.ndarray) -> np.ndarray:
    """Fit the shape's bounding box in 20x20, keep the aspect ratio, centre its mass in 28x28."""
    rows, cols = np.flatnonzero(shape.max(1) > 0.05), np.flatnonzero(shape.max(0) > 0.05)
    shape = shape[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = shape.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(
        Image.fromarray(shape.astype(np.float32), "F").resize(size, Image.Resampling.BOX)
    )
    small = np.clip(small, 0, 1)
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    cy, cx = ndimage.center_of_mass(small)
    y0 = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - size[1]))
    x0 = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - size[0]))
    canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = small
    peak = float(canvas.max())
    return np.clip(canvas / peak, 0, 1) if peak > 0 else canvas
