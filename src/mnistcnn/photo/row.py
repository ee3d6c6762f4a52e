"""A row of digits (a year, a phone number) -> each digit's 28x28, with the ways to read it.

Pieces of ink in line are grouped into digits; a wide group is also read cut where its ink is
thinnest, close neighbours also joined (the model then picks the likeliest).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mnistcnn.photo import ink
from mnistcnn.photo.digit import SPECK_MASS, Preprocessed, digits
from mnistcnn.photo.ink import Box, Part, analyse_file, box_of, gap, keep_mask, overlap, union

# MNIST digits are at most ~1.25 times as wide as tall (99th percentile): ink wider than
# SPLIT_ASPECT heights may be touching digits (two 1s are ~0.5), wider than WHOLE_ASPECT it is.
SPLIT_ASPECT = 0.5
WHOLE_ASPECT = 1.4
# A touching digit is ~0.45-1.1 heights wide: cuts are tried where the ink is thinnest.
DIGIT_ASPECT = 0.7
# One digit's ink is cut only into pieces this tall (of the row's height): not a 6's loop.
CUT_HEIGHT = 0.7
# A piece this tall (of the row's height) is a digit or part of one, a shorter one a speck or a
# loose stroke; a cut piece must hold one too: specks beside a 1 ("1:") span a digit's height.
TALL_STROKE = 0.45
# A bar along a digit's top (a 5's) may leave it this many heights wide (MNIST's widest
# digits); other loose pieces join a digit within one height.
BAR_SPAN = 1.25


@dataclass(frozen=True)
class Row:
    """A number's groups of ink, each with its readings, and each neighbours' joined digit."""

    readings: list[list[list[Preprocessed]]]
    joined: list[Preprocessed | None] = field(default_factory=list)
    steps: ink.Found | None = None  # the image's ink, for `steps_panel`, kept only when asked for
    height: int = 0  # the digits' height in the working image (0: unknown)


def _row_parts(parts: list[Part]) -> tuple[list[Part], int]:
    """The pieces of ink in the row of digits (not at the border, in line) and its height."""
    inside = [p for p in parts if not p.border] or parts
    biggest = max(p.mass for p in inside)
    big = [p for p in inside if p.mass >= 0.1 * biggest]
    # The second tallest: broken digits must not make it smaller, nor a scribble larger.
    heights = sorted((p.box[3] - p.box[1] for p in big), reverse=True)
    height = heights[1] if len(heights) >= 3 else heights[0]
    top, bottom = np.median([(p.box[1], p.box[3]) for p in big], axis=0).tolist()
    margin = 0.5 * height
    near = [p for p in inside if p.box[3] > top - margin and p.box[1] < bottom + margin]
    return [p for p in near if p.mass >= SPECK_MASS * biggest], height


def _box(group: list[Part]) -> Box:
    return union([p.box for p in group])


def _home(groups: list[list[Part]], part: Part, height: int) -> int | None:
    """The group a small piece sits over or under, else the one it touches if about as wide."""
    boxes = [_box(g) for g in groups]
    if not boxes:
        return None
    over = max(range(len(boxes)), key=lambda i: overlap(boxes[i], part.box))
    if overlap(boxes[over], part.box) >= 0.3:
        return over
    near = min(range(len(boxes)), key=lambda i: gap(boxes[i], part.box))
    left, top, right, bottom = part.box
    bar = right - left > max(bottom - top, 0.3 * height) and top <= boxes[near][1] + 0.15 * height
    joined = union([boxes[near], part.box])
    wide = joined[2] - joined[0] <= (BAR_SPAN if bar else 1.0) * height
    return near if gap(boxes[near], part.box) <= 0.1 * height and wide else None


def _columns(pieces: list[Part], height: int) -> list[list[Part]]:
    """Pieces grouped into digits, left to right."""
    # Tall pieces are digits (or touching digits); tall pieces stacked are one broken digit.
    tall = [p for p in pieces if p.box[3] - p.box[1] >= TALL_STROKE * height]
    loose = [p for p in pieces if p.box[3] - p.box[1] < TALL_STROKE * height]
    groups: list[list[Part]] = []
    for part in sorted(tall, key=lambda p: p.box[0] + p.box[2]):
        if groups and overlap(_box(groups[-1]), part.box) >= 0.5:
            groups[-1].append(part)
        else:
            groups.append([part])
    placed = True
    while placed:  # until no piece finds a digit: a dotted stroke joins dot by dot
        placed = False
        for part in list(loose):
            home = _home(groups, part, height)
            if home is not None:
                groups[home].append(part)
                loose.remove(part)
                placed = True
    # Small pieces close together as tall as a digit are one broken apart; a dash or specks not.
    clusters: list[list[Part]] = []
    for part in sorted(loose, key=lambda p: p.box[0]):
        near = [c for c in clusters if gap(_box(c), part.box) <= 0.3 * height]
        if near:
            near[0].append(part)
        else:
            clusters.append([part])
    groups += [c for c in clusters if _box(c)[3] - _box(c)[1] >= TALL_STROKE * height]
    return sorted(groups, key=lambda g: sum(_box(g)[0:3:2]))


def _cut(keep: np.ndarray, columns: list[int]) -> list[np.ndarray]:
    """The mask cut apart at `columns` (vertical lines), left to right, without empty pieces."""
    x = np.arange(keep.shape[1])
    pieces = [keep & (a <= x) & (x < b) for a, b in itertools.pairwise([0, *columns, len(x)])]
    return [piece for piece in pieces if piece.any()]


def _tallest(piece: np.ndarray) -> int:
    """The height of the tallest connected stroke in a piece of ink."""
    labels = ndimage.label(piece, structure=np.ones((3, 3)))[0]
    return max(rows.stop - rows.start for rows, _ in ndimage.find_objects(labels))


def _cut_columns(profile: np.ndarray, width: int, count: int) -> list[tuple[int, ...]]:
    """Ways to cut into `count` pieces: at the thinnest column near each even position."""
    step = width / count
    cuts = []
    for i in range(1, count):
        lo = max(1, round(i * step - 0.35 * step))
        hi = min(width - 1, round(i * step + 0.35 * step))
        cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else round(i * step))
    candidates = [tuple(sorted(set(cuts)))]
    if count == 2:  # also at the three thinnest of the middle 60 %, a tenth of the width apart
        for column in np.argsort(profile, kind="stable"):
            middle = 0.2 * width <= column <= 0.8 * width
            if middle and all(abs(column - c[0]) >= 0.1 * width for c in candidates):
                candidates.append((int(column),))
            if len(candidates) == 4:
                break
    return candidates


def _readings(keep: np.ndarray, height: int) -> list[list[np.ndarray]]:
    """Ways to read one group of ink: whole, and, if wide enough to be touching digits, cut."""
    left, top, right, bottom = box_of(keep)
    width = right - left
    aspect = width / max(1, height)
    whole = aspect <= WHOLE_ASPECT
    options = [[keep]] if whole else []
    if aspect < SPLIT_ASPECT:
        return options
    # Ink per column, lightly smoothed: touching strokes are thin where digits meet.
    profile = ndimage.uniform_filter1d(keep[top:bottom, left:right].sum(0).astype(float), 3)
    tried: set[tuple[int, ...]] = set()
    for count in range(2, max(2, math.ceil(aspect / DIGIT_ASPECT)) + 1):
        for columns in _cut_columns(profile, width, count):
            if columns in tried:
                continue
            tried.add(columns)
            pieces = _cut(keep, [left + c for c in columns])
            if len(pieces) != count:
                continue
            if whole and min(box_of(p)[3] - box_of(p)[1] for p in pieces) < CUT_HEIGHT * height:
                continue  # one digit's ink cut into a piece shorter than a digit
            strokes = (_tallest(p[top:bottom, left:right]) for p in pieces)  # in the group's box
            if whole and min(strokes) < TALL_STROKE * height:
                continue  # or into a piece without a stroke of its own: specks beside a 1
            options.append(pieces)
    return options or [[keep]]


def _joinable(a: np.ndarray, b: np.ndarray, height: int) -> bool:
    """Whether two close neighbours, together as wide as a digit, one short, are one digit."""
    left, top, right, bottom = box_of(a)
    start, upper, end, lower = box_of(b)
    close = start - right <= 0.15 * height and end - left <= height
    return close and min(bottom - top, lower - upper) < 0.8 * height


def segment(path: str | Path, *, steps: bool = False) -> Row:
    """Read an image file of digits in a row: each group's readings as 28x28 images."""
    found = analyse_file(path)
    pieces, height = _row_parts(found.parts)
    keeps = [keep_mask(found, group) for group in _columns(pieces, height)]
    readings = [[digits(found, option) for option in _readings(k, height)] for k in keeps]
    joined = [
        digits(found, [a | b])[0] if _joinable(a, b, height) else None
        for a, b in itertools.pairwise(keeps)
    ]
    return Row(readings, joined, found if steps else None, height)
