"""Find the ink: flatten the light, threshold the contrast, remove lines, label the pieces.

Boxes are (left, top, right, bottom), right and bottom exclusive, in the working image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mnistcnn.errors import ImageError
from mnistcnn.photo.decode import open_image, to_working
from mnistcnn.photo.lines import remove_lines

Box = tuple[int, int, int, int]

# How much more light-side than dark-side evidence calls the ink light (see `dark_ink`).
LIGHT_INK_ODDS = 10.0
# A broad marker filling the frame: its side is one piece this elongated (area over its widest
# spot's radius squared), the other side cut by it into three or more. Over 200 generated
# photos of each condition, where such a piece was the ink it measured 8-46 (the two whose
# polarity this decides: 20 and 21); where it was paper (between a vignette's dark corners,
# a page strip between a table's bands), 5-13.
STROKE_ELONGATION = 16.0
# A background this even (its 5th-95th percentile spread over the contrast of ink and paper)
# around a broad stroke is a digital image's. Over 10,000 generated photos, where this would
# call the thinner light side ink: white-on-black filled digits measured 0-0.44 (one 0.74; a
# smoothly enlarged scan's halo 0.30) and chalk boards 0.49-0.53, rightly; a vignette's dark
# corners 0.55 up and mixed photos 0.59 up, wrongly.
FLAT_SPREAD = 0.4
# A digit cropped to its ink (no paper around it to tell which side is ink) is one piece that
# cuts the paper into corners and loops. Over 10,000 generated photos, where this decided for
# light ink: a digit's widest spot measured 0.10-0.36 of the frame's longer side, a page's
# between dark corners or a table's 0.21 up; a digit's loops' elongation (as for
# STROKE_ELONGATION) up to 9.1 (one chalk digit 15), a page's hole holding a digit 5.3 up, all
# but three over 10. MNIST digits scanned at 8 px and cropped, where it flipped the answer: the
# ink held 0.39-0.56 of the frame (white on black), the paper 0.57-0.68 (black on white).
WHOLE_RADIUS = 0.2
HOLE_ELONGATION = 10.0
WHOLE_SHARE = 0.55
# The paper's brightness is estimated over windows this fraction of the longer side: wider than
# a marker stroke filling the frame; ramps, hills and steps of light survive the closing.
BACKGROUND_WINDOW = 0.5
# The paper's estimate reaches this many pixels (at half size) past a closing (see `flatten`).
SPILL = 1
# Ink is contrast above this fraction of the strongest ink's: a blurred stroke's edge lies at
# half its contrast; faint ruled lines stay below it.
INK_LEVEL = 0.45
# Pieces are traced down to this fraction (hysteresis): a fading stroke stays one piece, kept
# only if it also holds ink above INK_LEVEL.
FAINT_LEVEL = 0.25
# Below this contrast against the paper (as a fraction: see `flatten`) there is no digit.
MIN_CONTRAST = 0.12


@dataclass(frozen=True)
class Part:
    """One connected piece of ink: its pixels' label, bounding box and strength."""

    label: int
    box: Box
    mass: float  # summed ink contrast
    strength: float  # its strongest ink's contrast
    contact: float  # its pixels along one side of the frame (the most), over the longer side

    @property
    def border(self) -> bool:
        """Whether it touches the frame's edge."""
        return self.contact > 0


@dataclass(frozen=True)
class Found:
    """Everything found in one image: the ink and its connected pieces."""

    rgb: np.ndarray
    dark: bool | None  # dark ink on light paper; None: a transparent background's opacity is ink
    contrast: np.ndarray  # ink contrast above the paper's level
    peak: float  # the strongest ink's contrast
    labels: np.ndarray  # each pixel's piece (0: not ink)
    parts: list[Part]


def _resize(values: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(values), "F").resize(size, resample))


def _pool(channel: np.ndarray, combine: np.ufunc) -> np.ndarray:
    """Half resolution: each 2x2 block combined by `combine` (np.maximum, np.minimum, np.add)."""
    height, width = channel.shape
    even = np.pad(channel, ((0, height % 2), (0, width % 2)), mode="edge")
    pairs = combine.reduce(even.reshape(even.shape[0] // 2, 2, -1, 2), axis=3)  # along rows
    return combine.reduce(pairs, axis=1)


def dark_ink(luminance: np.ndarray) -> bool:
    """Whether the ink is darker than its background (pen on paper) or lighter (chalk)."""
    half = _pool(luminance, np.add) / 4
    # Split at the middle grey, the side whose widest spot is under half the other's (and under
    # ~30 % of the frame) is a stroke. Padded by the edge: a stroke crossing it stays as wide.
    smooth = ndimage.gaussian_filter(half, 2)  # sensor noise splits into specks, strokes do not
    low, high = np.percentile(smooth, [5, 95])
    if high - low > 0.1:
        below = smooth < (low + high) / 2
        dark = np.pad(below, max(half.shape) // 2, mode="edge")
        thick_dark, thick_light = (ndimage.distance_transform_edt(m).max() for m in (dark, ~dark))
        thin = min(thick_dark, thick_light)
        if thin < min(0.5 * max(thick_dark, thick_light), 0.15 * max(half.shape)):
            return bool(thick_dark < thick_light)
        stroke = below if thick_dark < thick_light else ~below
        if thin < min(0.5 * max(thick_dark, thick_light), 0.3 * max(half.shape)) and (
            _broad(stroke, ~stroke) or _flat(half, ~stroke, high - low)
        ):
            return bool(thick_dark < thick_light)
        whole_dark, whole_light = _whole(below, ~below), _whole(~below, below)
        if whole_dark != whole_light:
            return whole_dark
    # Else ink is the minority that stands out of its surroundings (9x9 and 17x17 blocks of
    # 16 px): generated chalk's light outweighs dark 150 times or more, a bright page's ~4x.
    height, width = half.shape
    blocks = _resize(half, (max(1, width // 8), max(1, height // 8)), Image.Resampling.BOX)
    deviation = {-1: 0.0, 1: 0.0}  # darker, lighter
    for size, (level, sign) in itertools.product((9, 17), ((25, -1), (75, 1))):
        local = ndimage.percentile_filter(blocks, level, size=size, mode="nearest")
        background = _resize(local, (width, height), Image.Resampling.BILINEAR)
        away = sign * (half - background) - 0.05  # sensor noise deviates to both sides alike
        deviation[sign] += float(np.clip(away, 0, None).sum())
    return deviation[1] < LIGHT_INK_ODDS * deviation[-1]


def _rim(mask: np.ndarray) -> np.ndarray:
    """The values along the frame's edge (its corners twice)."""
    return np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])


def _flat(values: np.ndarray, side: np.ndarray, contrast: float) -> bool:
    """Whether this side holds the other along the frame's edge (under a fifth of it left) and
    is even away from its own edge: a digital image's background, not light falling off into a
    vignette's dark corners."""
    rim = _rim(side)
    inside = values[ndimage.binary_erosion(side, iterations=4)]
    if rim.mean() <= 0.8 or inside.size == 0:
        return False
    low, high = np.percentile(inside, [5, 95])
    return bool(high - low < FLAT_SPREAD * contrast)


def _cut(
    stroke: np.ndarray, other: np.ndarray, connect_other: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """`stroke`'s and `other`'s pieces (label image, areas; `other`'s under 0.5 % of the frame
    as 0) when `stroke` is one piece (not counting those) cutting `other` into three or more."""
    least = 0.005 * stroke.size
    labels, count = ndimage.label(stroke, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    others, count = ndimage.label(other, structure=connect_other)
    sizes = np.bincount(others.ravel(), minlength=count + 1)[1:]
    if (areas >= least).sum() != 1 or (sizes >= least).sum() < 3:
        return None
    return labels, areas, others, np.where(sizes >= least, sizes, 0)


def _whole(stroke: np.ndarray, other: np.ndarray) -> bool:
    """Whether `stroke` is a digit cropped to its ink, the paper left in its corners and loops:
    one piece cutting `other` into three or more, narrow, the lesser side, under four fifths of
    the frame's edge, holding no elongated piece of `other` (a page holds the digit itself)."""
    if _rim(stroke).mean() >= 0.8 or stroke.mean() >= WHOLE_SHARE:
        return False
    cut = _cut(stroke, other)
    if cut is None:
        return False
    radius = ndimage.distance_transform_edt(np.pad(stroke, 1)).max()
    if radius >= WHOLE_RADIUS * max(stroke.shape):
        return False
    _, _, others, sizes = cut
    at_edge = _rim(others)
    for label in np.setdiff1d(np.flatnonzero(sizes) + 1, at_edge):
        hole = np.pad(others == label, 1)
        if sizes[label - 1] >= HOLE_ELONGATION * ndimage.distance_transform_edt(hole).max() ** 2:
            return False
    return True


def _broad(stroke: np.ndarray, other: np.ndarray) -> bool:
    """Whether `stroke` is one elongated piece that cuts `other` into three or more (pieces
    under 0.5 % of the frame left out) and runs along no side for half of it: a broad marker's
    digit, filling its frame."""
    cut = _cut(stroke, other, np.ones((3, 3)))
    if cut is None:
        return False
    labels, areas, _, _ = cut
    piece = labels == int(np.argmax(areas)) + 1
    sides = (piece[0], piece[-1], piece[:, 0], piece[:, -1])
    if max(float(side.mean()) for side in sides) >= 0.5:  # along half a side: a page, not ink
        return False
    piece = np.pad(piece, 1)
    return (
        float(areas.max()) / ndimage.distance_transform_edt(piece).max() ** 2 >= STROKE_ELONGATION
    )


def flatten(rgb: np.ndarray, dark: bool, reflect: bool = False) -> np.ndarray:
    """Ink contrast per pixel with the light flattened: 0 on paper, ~0.85 on a black pen stroke
    (or chalk, not `dark`). A pen's is a fraction of the paper's level; chalk's a fraction of
    the paper's distance from white, times the picture's typical distance (a light page's
    noise is not made strong): a picture and its negative differ by a constant factor.

    The paper beyond the frame is taken as its edge's (a vignette's dark corners stay out of
    the estimate) or, with `reflect`, as the frame mirrored (a stroke running along the edge,
    longer than the window, stays ink instead of passing for paper).
    """
    height, width = rgb.shape[:2]
    # The darkest channel carries a pen's contrast whatever its colour, the brightest a chalk's;
    # each weighed by the paper's level in it (tinted paper), a colour it hardly reflects left out.
    if dark:
        paper = np.maximum(np.median(rgb[::4, ::4].reshape(-1, 3), axis=0), 1.0)
        used = [
            values * np.float32(paper.max() / (255 * level))
            for values, level in zip(np.moveaxis(rgb, 2, 0), paper, strict=True)
            if level >= 0.25 * paper.max()
        ]
        channel = np.minimum.reduce(used)
    else:
        channel = rgb.max(axis=2).astype(np.float32) / 255
    smooth = ndimage.gaussian_filter(channel, 1.0)  # finer than any stroke: noise, JPEG blocks
    # The paper is a grey closing (dark ink) or opening (chalk) at half size, pooled so strokes
    # fade, padded so a vignette stays light. The second filter, SPILL px wider, takes back what
    # the enlarged closing spills past a sharp step of light (a shadow's edge).
    half = _pool(smooth, np.maximum if dark else np.minimum)
    window = max(4, round(BACKGROUND_WINDOW * max(half.shape)))
    first, second = (ndimage.maximum_filter, ndimage.minimum_filter)[:: 1 if dark else -1]
    padded = np.pad(half, window, mode="reflect" if reflect else "edge")
    closed = second(first(padded, size=window), size=window + 2 * SPILL)
    closed = closed[window:-window, window:-window]
    back = _resize(closed, (width, height), Image.Resampling.BILINEAR)
    if dark:
        return (back - smooth) / np.maximum(back, 0.02)
    room = 1 - back
    return (smooth - back) / np.maximum(room, 0.02) * float(np.median(room))


def _ink_mask(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ink above the paper's level, the pixels that may be ink, and the strongest ink's contrast."""
    # The 0.02 % strongest pixels: a digit has more than that, sensor noise peaks do not count.
    k = max(10, ink.size // 5000)
    strongest = float(np.partition(ink.ravel(), -k)[-k])
    # The paper's level is the most common under half the strongest ink (all, if that is under
    # 1 %: a digit filling the frame); its noise the spread away from the ink, or around the
    # median if less (light in two levels, a shadow's).
    sample = ink[::2, ::2].ravel()
    paper = sample[sample < 0.5 * strongest]
    if paper.size < sample.size // 100:
        paper = sample
    counts, edges = np.histogram(paper, bins=64, range=(np.percentile(paper, 5), paper.max()))
    base = float(edges[np.argmax(counts)] + edges[np.argmax(counts) + 1]) / 2
    below = np.median(base - paper[paper <= base])
    spread = 1.4826 * float(min(below, np.median(np.abs(paper - np.median(paper)))))
    contrast = ink - base
    peak = strongest - base
    if peak < max(MIN_CONTRAST, 8 * spread):
        raise ImageError("no digit found (the image is blank or has almost no contrast)")
    return contrast, contrast > max(FAINT_LEVEL * peak, 5 * spread), peak


def analyse(img: Image.Image) -> Found:
    """An opened image's pieces of ink (8-connected) at working size; ImageError if none."""
    return find(*to_working(img))


def find(
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    reflect: bool = False,
    dark: bool | None = None,
) -> Found:
    """The pieces of ink in a working-size image (`to_working`); `reflect` as in `flatten`, the
    polarity `dark_ink`'s unless given."""
    if alpha is None:
        if dark is None:
            dark = dark_ink(np.asarray(Image.fromarray(rgb, "RGB").convert("L"), np.float32) / 255)
        ink = flatten(rgb, dark, reflect)
    else:
        ink, dark = alpha, None
    contrast, mask, peak = _ink_mask(ink)
    labels, count = ndimage.label(remove_lines(mask), structure=np.ones((3, 3)))
    masses = ndimage.sum_labels(contrast, labels, np.arange(1, count + 1))
    # Each piece's strongest ink, without sorting the frame (as ndimage.maximum does).
    strengths = np.zeros(count + 1, contrast.dtype)
    on = labels > 0
    np.maximum.at(strengths, labels[on], contrast[on])
    sides = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    contact = np.max([np.bincount(s, minlength=count + 1) for s in sides], 0) / max(labels.shape)
    parts = []
    for label, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
        if float(strengths[label]) >= INK_LEVEL * peak:
            box = (cols.start, rows.start, cols.stop, rows.stop)
            values = float(masses[label - 1]), float(strengths[label]), float(contact[label])
            parts.append(Part(label, box, *values))
    if not parts:
        raise ImageError("no digit found (no ink stands out from the background)")
    return Found(rgb, dark, contrast, peak, labels, parts)


def analyse_file(path: str | Path) -> Found:
    """`analyse` of an image file, its path named in the errors."""
    img = open_image(path)
    try:
        return analyse(img)
    except ImageError as exc:
        raise ImageError(f"{exc}: {path}") from None


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
