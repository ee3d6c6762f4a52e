"""Find the ink: threshold the flattened contrast, remove lines, label the connected pieces.

Also the box arithmetic of the digit and row steps: (left, top, right, bottom), right and
bottom exclusive, in the working image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from mnistcnn.errors import ImageError
from mnistcnn.photo.decode import to_working
from mnistcnn.photo.light import flatten
from mnistcnn.photo.lines import remove_lines

Box = tuple[int, int, int, int]

# A pixel is ink where its contrast is above this fraction of its digit's strongest ink: half
# the stroke's contrast is where a blurred stroke edge lies; faint ruled lines stay below it.
INK_LEVEL = 0.45
# Pieces are traced down to this fraction of the strongest ink (hysteresis): a stroke that fades
# stays in one piece, but a piece is kept only if it also holds ink above INK_LEVEL.
FAINT_LEVEL = 0.25
# Below this contrast against the paper (a fraction of the paper's brightness) there is no digit.
MIN_CONTRAST = 0.12


@dataclass(frozen=True)
class Part:
    """One connected piece of ink: its pixels' label, bounding box and strength."""

    label: int
    box: Box
    mass: float  # summed ink contrast
    strength: float  # its strongest ink's contrast
    border: bool  # touches the frame's edge


@dataclass(frozen=True)
class Found:
    """Everything found in one image: the ink and its connected pieces."""

    rgb: np.ndarray
    contrast: np.ndarray  # ink contrast above the paper's level
    peak: float  # the strongest ink's contrast
    labels: np.ndarray  # each pixel's piece (0: not ink)
    parts: list[Part]


def _ink_mask(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ink above the paper's level, the pixels that may be ink, and the strongest ink's contrast."""
    # The 0.02 % strongest pixels: a digit has more than that, sensor noise peaks do not count.
    k = max(10, ink.size // 5000)
    strongest = float(np.partition(ink.ravel(), -k)[-k])
    # The paper's level and noise from a quarter of the pixels, those under half the strongest
    # ink's: a digit cropped tightly can cover half the frame.
    sample = ink[::2, ::2].ravel()
    paper = sample[sample < 0.5 * strongest]
    if paper.size < sample.size // 10:  # no level stands apart: the frame is all one
        paper = sample
    base = float(np.median(paper))
    spread = 1.4826 * float(np.median(np.abs(paper - base)))
    contrast = ink - base
    peak = strongest - base
    if peak < max(MIN_CONTRAST, 8 * spread):
        raise ImageError("no digit found (the image is blank or has almost no contrast)")
    return contrast, contrast > max(FAINT_LEVEL * peak, 5 * spread), peak


def _parts(mask: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, list[Part]]:
    """Connected pieces of ink (8-connected) with their boxes and strength."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return labels, []
    index = np.arange(1, count + 1)
    masses = ndimage.sum_labels(ink, labels, index)
    strengths = ndimage.maximum(ink, labels, index)
    height, width = mask.shape
    parts = []
    for label, (rows, cols) in zip(index, ndimage.find_objects(labels), strict=True):
        box = (cols.start, rows.start, cols.stop, rows.stop)
        border = box[0] == 0 or box[1] == 0 or box[2] == width or box[3] == height
        mass, strength = float(masses[label - 1]), float(strengths[label - 1])
        parts.append(Part(int(label), box, mass, strength, border))
    return labels, parts


def find(rgb: np.ndarray, ink: np.ndarray) -> Found:
    """The pieces of ink in an ink map that hold ink above INK_LEVEL; ImageError if none."""
    contrast, mask, peak = _ink_mask(ink)
    labels, parts = _parts(remove_lines(mask), contrast)
    parts = [p for p in parts if p.strength >= INK_LEVEL * peak]
    if not parts:
        raise ImageError("no digit found (no ink stands out from the background)")
    return Found(rgb, contrast, peak, labels, parts)


def analyse(img: Image.Image) -> Found:
    """An opened image's ink at working size: alpha where transparent, else the flattened light."""
    rgb, alpha = to_working(img)
    return find(rgb, alpha if alpha is not None else flatten(rgb))


def keep_mask(found: Found, parts: list[Part]) -> np.ndarray:
    """The pixels of these pieces of ink."""
    return np.isin(found.labels, [p.label for p in parts])


def box_of(keep: np.ndarray) -> Box:
    """The bounding box of a mask's pixels."""
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def gap(a: Box, b: Box) -> int:
    """Chessboard distance between two boxes (0 when they overlap)."""
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3], 0)


def union(boxes: list[Box]) -> Box:
    """The box around all these boxes."""
    lefts, tops, rights, bottoms = zip(*boxes, strict=True)
    return min(lefts), min(tops), max(rights), max(bottoms)


def overlap(a: Box, b: Box) -> float:
    """How much two boxes overlap left to right, as a fraction of the narrower one."""
    shared = min(a[2], b[2]) - max(a[0], b[0])
    return shared / max(1, min(a[2] - a[0], b[2] - b[0]))
