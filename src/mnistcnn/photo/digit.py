"""Choose the digit among the pieces of ink and make it MNIST's 28x28.

The strongest piece away from the frame's edge is the digit; pieces near it (a broken stroke, a
5's bar written apart) join it; frames drawn around it (a circle, a form's box) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mnistcnn.errors import ImageError
from mnistcnn.photo.decode import open_image
from mnistcnn.photo.ink import (
    Box,
    Found,
    Part,
    analyse,
    box_of,
    find,
    gap,
    keep_mask,
    overlap,
    union,
)
from mnistcnn.photo.redraw import redraw, to_28
from mnistcnn.photo.steps import Steps

# Pieces of ink with less than this fraction of the largest piece's ink are specks (noise,
# grain) and left out; above it they may be a dotted or skipped stroke, kept where they sit by
# a digit.
SPECK_MASS = 0.005
# A bar written apart over a digit's top (a 5's) may stand this fraction of its height above it:
# 9 in 10 of MNIST's (124 in the training set, 96 of them 5s) stand within 0.23, and a faint or
# blurred photo's threshold widens the gap.
BAR_GAP = 0.4
# Ink inside a piece's holes, as a share of the piece's own, that makes it a frame drawn around
# the digit (a circle, a form's box) rather than part of the digit.
FRAMED_MASS = 0.2


@dataclass(frozen=True)
class Preprocessed:
    """The 28x28 model input in [0, 1] (white ink on black) and where the digit was found."""

    image: np.ndarray
    box: Box  # in the working image
    steps: Steps | None = None
    crop: np.ndarray | None = None  # the stroke-normalized digit before scaling to 20x20
    frame: tuple[int, int] = (0, 0)  # width, height of the working image `box` is in


def _unframed(found: Found) -> list[Part]:
    """The pieces less frames: pieces whose holes hold other ink of FRAMED_MASS of their own."""
    boxes = np.array([p.box for p in found.parts])
    masses = np.array([p.mass for p in found.parts])
    # within[i, j]: piece j's box lies inside piece i's, the cheap test before the holes'.
    within = (boxes[None, :, :2] >= boxes[:, None, :2]).all(2)
    within &= (boxes[None, :, 2:] <= boxes[:, None, 2:]).all(2)
    np.fill_diagonal(within, False)
    frames = set()
    for i in np.flatnonzero(within @ masses >= FRAMED_MASS * masses):
        part = found.parts[i]
        left, top, right, bottom = part.box
        labels = found.labels[top:bottom, left:right]
        ring = labels == part.label
        inside = np.isin([p.label for p in found.parts], labels[ndimage.binary_fill_holes(ring)])
        if masses[inside & within[i]].sum() >= FRAMED_MASS * part.mass:
            frames.add(part.label)
    return [p for p in found.parts if p.label not in frames]


def _bar_over(part: Box, box: Box) -> bool:
    """Whether a piece is a bar written apart over the digit's top (a 5's, a 7's)."""
    # At least twice as wide as tall and 0.3 as wide as the digit, over it, by at most BAR_GAP.
    left, top, right, bottom = part
    width, height = box[2] - box[0], box[3] - box[1]
    bar = right - left >= max(2 * (bottom - top), 0.3 * width)
    return bar and overlap(part, box) >= 0.3 and 0 <= box[1] - bottom <= BAR_GAP * height


def _digit_parts(parts: list[Part]) -> list[Part]:
    """The strongest piece of ink and the pieces near it (a broken stroke, a detached bar)."""
    # Ink at the frame's edge is mostly the table, a page edge or a shadow, not the digit.
    main = max(parts, key=lambda p: p.mass * (0.05 if p.border else 1.0))
    chosen = [main]
    box = main.box
    grew = True
    while grew:
        grew = False
        reach = 0.2 * max(box[2] - box[0], box[3] - box[1])
        for part in parts:
            if part in chosen or part.border or part.mass < SPECK_MASS * main.mass:
                continue
            if gap(part.box, box) <= reach or _bar_over(part.box, box):
                chosen.append(part)
                box = union([box, part.box])
                grew = True
    return chosen


def digits(found: Found, keeps: list[np.ndarray]) -> list[Preprocessed]:
    """Each mask's ink as an MNIST-style digit."""
    made = []
    frame = (found.labels.shape[1], found.labels.shape[0])
    for keep in keeps:
        crop = redraw(found.contrast, keep, found.peak)
        made.append(Preprocessed(to_28(crop), box_of(keep), crop=crop, frame=frame))
    return made


def trace(found: Found, made: list[Preprocessed]) -> Steps:
    """The steps' pictures of an image and the digits made from it."""
    ink = np.clip(found.contrast / found.peak, 0, 1)
    boxes = [d.box for d in made]
    crops = [d.crop for d in made if d.crop is not None]
    return Steps(
        found.rgb, ink, keep_mask(found, found.parts), boxes, crops, [d.image for d in made]
    )


def _one_digit(found: Found) -> np.ndarray:
    """Where the digit of a single-digit image is: its strongest piece and the pieces near it."""
    return keep_mask(found, _digit_parts(_unframed(found)))


def preprocess_image(img: Image.Image, *, steps: bool = False) -> Preprocessed:
    """An opened image -> its MNIST-style 28x28 version (one digit)."""
    found = analyse(img)
    (digit,) = digits(found, [_one_digit(found)])
    return replace(digit, steps=trace(found, [digit])) if steps else digit


def to_mnist(ink: np.ndarray) -> Preprocessed:
    """An ink map (bright ink on dark) -> the 28x28 image of the digit in it."""
    found = find(np.zeros((*ink.shape, 3), np.uint8), ink)
    return digits(found, [_one_digit(found)])[0]


def preprocess(path: str | Path, *, steps: bool = False) -> Preprocessed:
    """Read an image file and return its MNIST-style 28x28 version."""
    img = open_image(path)
    try:
        return preprocess_image(img, steps=steps)
    except ImageError as exc:
        raise ImageError(f"{exc}: {path}") from None
