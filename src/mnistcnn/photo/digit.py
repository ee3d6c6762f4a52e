"""Choose the digit among the pieces of ink, redraw it as MNIST's were drawn, show the steps.

The strongest piece away from the frame's edge is the digit, with the pieces near it; frames
drawn around it are left out. It is redrawn at MNIST's stroke width, in a 20x20 box in 28x28.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mnistcnn.errors import ImageError
from mnistcnn.photo import ink

# MNIST's digit box inside its 28x28 frame.
BOX = 20
SIDE = 28
# MNIST's stroke width / digit box is 0.085-0.2 (5th-95th percentile of the test set).
STROKE_RANGE = (0.09, 0.18)
# A digit is redrawn from its mask at no less than this long side (in pixels) before scaling down.
CROP_SIDE = 96
# Pieces with less of the largest piece's ink are specks; more may be a dotted stroke.
SPECK_MASS = 0.005
# Pieces apart from the digit whose strongest ink is under this share of its own are not its
# own: one pen draws a digit's pieces alike, a page edge's rim or paper noise beside it is
# fainter. (A lighter block touching or in the digit's box, as a low-resolution scan's, joins.)
JOIN_STRENGTH = 0.6
# A bar apart over a digit's top (a 5's) stands within this fraction of its height above it:
# 9 in 10 of MNIST's 124 within 0.23; a blurred photo's gap is wider.
BAR_GAP = 0.4
# Ink along this share of the frame's longer side, at one edge, is beyond the page (a table).
EDGE_RUN = 0.5
# Ink in a piece's holes, as a share of its own, that makes it a frame around the digit.
FRAMED_MASS = 0.2
# A digit whose edges are this soft for its size (its long side over the width of its edges)
# was drawn at about this many pixels or fewer, under MNIST's 20: a low-resolution scan
# enlarged. Thresholding breaks its grey strokes into pieces; its grey is kept instead ...
SOFT_RESOLUTION = 12
# ... when the digit is this long in the working image (a smaller soft digit is one blurred
# in a larger photo, better read thresholded).
SOFT_MIN_SIDE = 64
# Kept grey is stretched so that this fraction of the digit's strongest ink is full ink.
SOFT_FULL = 0.7


@dataclass(frozen=True)
class Preprocessed:
    """The 28x28 model input in [0, 1] (white ink on black) and where the digit was found."""

    image: np.ndarray
    box: ink.Box  # in the working image
    steps: ink.Found | None = None  # the image's ink, for `steps_panel`, kept only when asked for
    crop: np.ndarray | None = None  # the digit's shape (`_shape`) before scaling to 20x20
    frame: tuple[int, int] = (0, 0)  # width, height of the working image `box` is in


def _unframed(found: ink.Found) -> list[ink.Part]:
    """The pieces less frames: pieces whose holes hold other ink of FRAMED_MASS of their own."""
    boxes = np.array([p.box for p in found.parts])
    masses = np.array([p.mass for p in found.parts])
    labels = np.array([p.label for p in found.parts])
    # within[i, j]: piece j's box lies inside piece i's, the cheap test before the holes'.
    within = (boxes[None, :, :2] >= boxes[:, None, :2]).all(2)
    within &= (boxes[None, :, 2:] <= boxes[:, None, 2:]).all(2)
    np.fill_diagonal(within, False)
    frames = set()
    for i in np.flatnonzero(within @ masses >= FRAMED_MASS * masses):
        left, top, right, bottom = boxes[i]
        region = found.labels[top:bottom, left:right]
        inside = np.isin(labels, region[ndimage.binary_fill_holes(region == labels[i])])
        if masses[inside & within[i]].sum() >= FRAMED_MASS * masses[i]:
            frames.add(labels[i])
    return [p for p in found.parts if p.label not in frames]


def _bar_over(part: ink.Box, box: ink.Box) -> bool:
    """Whether a piece is a bar over the digit's top (a 5's): wide, over it, within BAR_GAP."""
    left, top, right, bottom = part
    width, height = box[2] - box[0], box[3] - box[1]
    bar = right - left >= max(2 * (bottom - top), 0.3 * width)
    return bar and ink.overlap(part, box) >= 0.3 and 0 <= box[1] - bottom <= BAR_GAP * height


def _within(part: ink.Part, box: ink.Box) -> bool:
    """Whether a piece overlaps a box and adding it grows the box by under half each way."""
    grown = ink.union([box, part.box])
    wider = grown[2] - grown[0] < 1.5 * (box[2] - box[0])
    return ink.gap(part.box, box) == 0 and wider and grown[3] - grown[1] < 1.5 * (box[3] - box[1])


def _digit_parts(parts: list[ink.Part]) -> list[ink.Part]:
    """The strongest piece of ink and the pieces near it (a broken stroke, a detached bar)."""
    # Ink along the frame's edge is a table, page edge or shadow; in short runs a filling digit.
    main = max(parts, key=lambda p: p.mass * (0.05 if p.contact >= EDGE_RUN else 0.5**p.border))
    chosen = [main]
    box = main.box
    grew = True
    while grew:
        grew = False
        reach = 0.2 * max(box[2] - box[0], box[3] - box[1])
        for part in parts:
            if part in chosen or part.mass < SPECK_MASS * main.mass:  # a speck
                continue
            gap = ink.gap(part.box, box)
            if gap > 0 and part.strength < JOIN_STRENGTH * main.strength:  # apart and faint
                continue
            # Ink at the edge joins a digit at the edge (cropped tightly), or one it outweighs
            # while touching the edge in short runs (strokes, not a table beyond the page), or
            # overlaps without growing it by half (a stroke that left the frame and came back), or
            # is its bar (a 5's, written apart, along the top edge).
            stroke = part.contact < EDGE_RUN and (
                part.mass >= main.mass or _within(part, box) or _bar_over(part.box, box)
            )
            if part.border and not (main.border or stroke):
                continue
            near = max(reach, 0.2 * max(part.box[2] - part.box[0], part.box[3] - part.box[1]))
            if gap <= near or _bar_over(part.box, box):
                chosen.append(part)
                box = ink.union([box, part.box])
                grew = True
    return chosen


def _fill_specks(mask: np.ndarray, size: int) -> np.ndarray:
    """Fill holes smaller than `size` pixels (chalk grain, a pen's skip), not a digit's loops."""
    holes = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)[0]
    small = np.bincount(holes.ravel()) < size
    small[0] = False  # not a hole
    return mask | small[holes]


def _redraw(contrast: np.ndarray, keep: np.ndarray, peak: float) -> np.ndarray:
    """The digit as a clean shape (float in [0, 1]) at >= CROP_SIDE px, MNIST stroke width."""
    left, top, right, bottom = ink.box_of(keep)
    pad = 2
    # Thresholded after enlarging (smooth edges), at half the local strongest ink's contrast: a
    # blurred or small digit's thin strokes are fainter than its thick ones.
    level = ink.INK_LEVEL * min(peak, float(contrast[keep].max()))
    crop = np.where(ndimage.binary_dilation(keep, iterations=2), contrast, 0)
    crop = np.pad(crop[top:bottom, left:right], pad)
    zoom = max(1.0, CROP_SIDE / max(crop.shape))
    if zoom > 1:
        crop = ndimage.zoom(crop, zoom, order=1)
    local = ndimage.maximum_filter(crop, size=max(3, round(0.15 * max(crop.shape))))
    shape = crop > np.clip(ink.INK_LEVEL * local, ink.FAINT_LEVEL / ink.INK_LEVEL * level, level)
    side = max(shape.shape) - 2 * pad * zoom
    shape = _fill_specks(shape, max(4, round(0.003 * side * side)))
    # The mean stroke width: twice the area over the outline's length.
    outline = shape & ~ndimage.binary_erosion(shape)
    width = 2 * float(shape.sum()) / max(1.0, float(outline.sum()))
    target = float(np.clip(width / side, *STROKE_RANGE)) * side
    if abs(target - width) < 1:
        return shape.astype(np.float32)
    # Grow or shrink by half the difference on each side, along the signed distance.
    grow = (target - width) / 2
    shape = np.pad(shape, math.ceil(max(grow, 0)) + 1)
    inside, outside = (ndimage.distance_transform_edt(m) for m in (shape, ~shape))
    return np.clip(0.5 + inside - outside + grow, 0, 1).astype(np.float32)


def _edge_width(contrast: np.ndarray, keep: np.ndarray, box: ink.Box) -> float:
    """How many pixels the edges of the digit (`keep`, boxed by `box`) take from paper to its
    strongest ink."""
    left, top, right, bottom = box
    # The slope up to 2 px around the ink, each pixel's from its neighbours: 3 px around it.
    around = np.s_[max(0, top - 3) : bottom + 3, max(0, left - 3) : right + 3]
    rows, cols = np.gradient(contrast[around])
    slope = np.hypot(rows, cols)[ndimage.binary_dilation(keep[around], iterations=2)]
    return float(contrast[keep].max()) / max(float(np.percentile(slope, 99)), 1e-6)


def _soft(
    found: ink.Found, keep: np.ndarray, edge: float, box: ink.Box
) -> tuple[np.ndarray, np.ndarray]:
    """The grey levels within an edge's width of the digit's ink (`keep`, boxed by `box`),
    stretched (see SOFT_FULL), and the ink they hold.

    A soft stroke fades over an edge's width: pieces of ink that near the digit, or near such
    pieces, are its own, however faint (a 7's bar fainter than its stem) or wherever they touch
    the frame."""
    reach = max(1, round(edge))
    boxes = [(c.start, r.start, c.stop, r.stop) for r, c in ndimage.find_objects(found.labels)]
    grown, box = box, None
    while grown != box:  # a piece that joins brings the next within reach
        box = grown
        near = [label for label, b in enumerate(boxes, 1) if ink.gap(b, box) <= reach]
        grown = ink.union([box, *(boxes[label - 1] for label in near)])
    keep = np.isin(found.labels, near)
    left, top, right, bottom = box  # the pieces' union: the digit's first box within it
    inside = ndimage.distance_transform_edt(~keep) <= reach
    crop = np.where(inside, found.contrast, 0)[
        max(0, top - reach) : bottom + reach, max(0, left - reach) : right + reach
    ]
    strongest = float(found.contrast[keep].max())
    crop = np.clip(crop / (SOFT_FULL * strongest), 0, 1).astype(np.float32)
    crop[crop < 0.1] = 0  # the paper's noise around it
    return crop, keep


def _shape(found: ink.Found, keep: np.ndarray, soft: bool) -> tuple[np.ndarray, np.ndarray]:
    """The digit's shape, redrawn at MNIST's stroke width or (`soft`) its grey when it is of
    low resolution, and the ink it is drawn from."""
    if soft:
        box = left, top, right, bottom = ink.box_of(keep)
        side = max(right - left, bottom - top)
        edge = _edge_width(found.contrast, keep, box)
        if side >= SOFT_MIN_SIDE and side < SOFT_RESOLUTION * edge:
            return _soft(found, keep, edge, box)
    return _redraw(found.contrast, keep, found.peak), keep


def _to_28(shape: np.ndarray) -> np.ndarray:
    """Fit the shape's bounding box in 20x20, keep the aspect ratio, centre its mass in 28x28."""
    rows, cols = np.flatnonzero(shape.max(1) > 0.05), np.flatnonzero(shape.max(0) > 0.05)
    shape = shape[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = shape.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(shape.astype(np.float32), "F").resize(size, Image.Resampling.BOX)
    small = np.clip(np.asarray(small), 0, 1)
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    cy, cx = ndimage.center_of_mass(small)
    y0 = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - size[1]))
    x0 = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - size[0]))
    canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = small
    return np.clip(canvas / canvas.max(), 0, 1)  # the shape holds ink above 0.05


def digits(found: ink.Found, keeps: list[np.ndarray], soft: bool = False) -> list[Preprocessed]:
    """Each mask's ink as an MNIST-style digit; with `soft`, one of low resolution keeps its
    grey (not for a row's digits: the grey around one takes in its neighbour's ink)."""
    frame = (found.labels.shape[1], found.labels.shape[0])
    shapes = [_shape(found, keep, soft) for keep in keeps]
    return [
        Preprocessed(_to_28(crop), ink.box_of(used), crop=crop, frame=frame)
        for crop, used in shapes
    ]


def _found_digit(found: ink.Found) -> tuple[ink.Found, list[ink.Part]]:
    """The digit's pieces of ink, found again with the frame mirrored (`ink.flatten`) when they
    touch its edge: a stroke along the edge (a 7's bar, a 5's top) passes for paper otherwise."""
    parts = _digit_parts(_unframed(found))
    if found.dark is None or not any(p.border for p in parts):
        return found, parts
    try:
        found = ink.find(found.rgb, reflect=True, dark=found.dark)
    except ImageError:
        return found, parts
    return found, _digit_parts(_unframed(found))


def _choose(found: ink.Found, steps: bool) -> Preprocessed:
    found, parts = _found_digit(found)
    (digit,) = digits(found, [ink.keep_mask(found, parts)], soft=True)
    return replace(digit, steps=found) if steps else digit


def preprocess_image(img: Image.Image, *, steps: bool = False) -> Preprocessed:
    """An opened image -> its MNIST-style 28x28 version (one digit)."""
    return _choose(ink.analyse(img), steps)


def preprocess(path: str | Path, *, steps: bool = False) -> Preprocessed:
    """Read an image file and return its MNIST-style 28x28 version."""
    return _choose(ink.analyse_file(path), steps)


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(values, 0, 1) * 255).astype(np.uint8), "L")


def _tile(image: Image.Image, title: str, height: int) -> Image.Image:
    scale = height / image.height
    size = (max(1, round(image.width * scale)), height)
    resample = Image.Resampling.NEAREST if scale > 2 else Image.Resampling.BILINEAR
    tile = Image.new("RGB", (max(size[0], 8 * len(title)), height + 16), (40, 40, 40))
    tile.paste(image.convert("RGB").resize(size, resample), (0, 16))
    ImageDraw.Draw(tile).text((2, 2), title, fill=(255, 255, 255))
    return tile


def steps_panel(found: ink.Found, made: list[Preprocessed], height: int = 192) -> Image.Image:
    """One picture of every step: photo, flattened light, ink mask and boxes, crops, 28x28s."""
    mask = _grey(ink.keep_mask(found, found.parts).astype(np.float32) * 0.6).convert("RGB")
    draw = ImageDraw.Draw(mask)
    for left, top, right, bottom in [d.box for d in made]:
        draw.rectangle((left, top, right - 1, bottom - 1), outline=(255, 60, 60), width=2)
    shown = [(Image.fromarray(found.rgb, "RGB"), "photo")]
    shown += [(_grey(found.contrast / found.peak), "flattened light"), (mask, "mask, digit box")]
    crops = [d.crop for d in made if d.crop is not None]
    shown += [(_grey(c), "" if i else "crop") for i, c in enumerate(crops)]
    shown += [(_grey(d.image), "" if i else "28x28") for i, d in enumerate(made)]
    tiles = [_tile(image, title, height) for image, title in shown]
    lefts = list(itertools.accumulate([t.width + 6 for t in tiles], initial=0))  # 6 px apart
    panel = Image.new("RGB", (lefts[-1] - 6, height + 16))
    for tile, left in zip(tiles, lefts, strict=False):
        panel.paste(tile, (left, 0))
    return panel
