"""A photo of a digit (or a row of digits) -> the 28x28 MNIST-style images the model expects.

MNIST digits are white ink on black, the ink's bounding box scaled to fit 20x20 keeping its
aspect ratio, pasted into 28x28 with its centre of mass at the centre. A photo is turned into
that in steps: decode small (JPEG draft, EXIF orientation), flatten the light (the paper's
brightness is estimated by a morphological closing that removes strokes but keeps gradients,
vignettes and shadow edges, and the image is divided by it), find the ink (threshold, ruled and
squared lines and the table at the border removed), pick the digit, normalize its stroke width,
scale and centre it. PIL, numpy and scipy.ndimage only: no torchvision (start-up time).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from scipy import ndimage

from mnistcnn.errors import ImageError

Filter = Callable[..., np.ndarray]

# Decoding more than this many pixels is refused (a 12 MP phone photo is 12e6).
MAX_PIXELS = 64_000_000
# Work at a long side of at most this: enough for a digit, fast on a 12 MP photo.
WORK_SIDE = 512
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale down to a long side of no less than this.
DRAFT_SIDE = 384
# Smaller images (an MNIST-sized PNG, an icon) are enlarged to this long side so that every
# length below, in pixels, means the same whatever the input size.
MIN_SIDE = 256
# How much more light-side than dark-side evidence calls the ink light (see `_dark_ink`).
LIGHT_INK_ODDS = 10.0
# The paper's brightness is estimated over windows this fraction of the shorter side: wider
# than any pen or marker stroke, so strokes vanish from the estimate while light does not.
BACKGROUND_WINDOW = 0.5
# The paper's estimate reaches this many pixels (at half size) past a closing (see `_background`).
SPILL = 1
# A pixel is ink where its contrast is above this fraction of its digit's strongest ink: half
# the stroke's contrast is where a blurred stroke edge lies; faint ruled lines stay below it.
INK_LEVEL = 0.45
# Pieces are traced down to this fraction of the strongest ink in the image (hysteresis): a
# stroke that fades (a light pen, a skip) stays in one piece, but a piece is kept only if it
# also holds ink above INK_LEVEL.
FAINT_LEVEL = 0.25
# Below this contrast against the paper (a fraction of the paper's brightness) there is no digit.
MIN_CONTRAST = 0.12
# MNIST's digit box inside its 28x28 frame.
BOX = 20
SIDE = 28
# MNIST stroke width / digit box, 5th to 95th percentile of the test set is 0.085-0.2: thinner
# (fine pen) or thicker (marker) strokes are brought into this range.
STROKE_RANGE = (0.09, 0.18)
# A digit is redrawn from its mask at no less than this long side (in pixels) before scaling down.
CROP_SIDE = 96
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
class Steps:
    """Intermediate pictures, kept only when asked for (`--save-preprocessed`)."""

    photo: np.ndarray  # (H, W, 3) uint8: the working image
    ink: np.ndarray  # (H, W) the flattened ink map, 1 at the strongest ink
    mask: np.ndarray  # (H, W) bool: what was called ink (lines and specks removed)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # each digit's box
    crops: list[np.ndarray] = field(default_factory=list)  # each digit, stroke-normalized
    images: list[np.ndarray] = field(default_factory=list)  # each digit's 28x28


@dataclass(frozen=True)
class Preprocessed:
    """The 28x28 model input in [0, 1] (white ink on black) and where the digit was found."""

    image: np.ndarray
    box: tuple[int, int, int, int]  # left, top, right, bottom in the working image
    steps: Steps | None = None
    crop: np.ndarray | None = None  # the stroke-normalized digit before scaling to 20x20
    frame: tuple[int, int] = (0, 0)  # width, height of the working image `box` is in


@dataclass(frozen=True)
class _Part:
    """One connected piece of ink: its pixels' label, bounding box and strength."""

    label: int
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive)
    area: int
    mass: float  # summed ink contrast
    strength: float  # its strongest ink's contrast
    border: bool  # touches the frame's edge


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
            # JPEG: decode at the smallest 1/2^k scale that keeps the long side >= DRAFT_SIDE
            # (a 12 MP photo at 1/8 in ~5 ms instead of ~40 ms at full size).
            reduce = max(1, max(img.size) // DRAFT_SIDE)
            img.draft("RGB", (max(1, img.width // reduce), max(1, img.height // reduce)))
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


def _working(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB (uint8) at working size and, if the background is transparent, alpha in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((np.clip(arr / top, 0, 1) * 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    img = img.convert("RGBA" if "A" in img.getbands() or img.mode in ("PA", "RGBa") else "RGB")
    long_side = max(img.size)
    if long_side > WORK_SIDE:
        scale = WORK_SIDE / long_side
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    elif long_side < MIN_SIDE:
        scale = MIN_SIDE / long_side
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
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


def _dark_ink(luminance: np.ndarray) -> bool:
    """Whether the ink is darker than its background (pen on paper) or lighter (chalk).

    Ink is a minority: a dark stroke is darker than three quarters of its surroundings,
    chalk lighter. The surroundings' quartiles, over 9x9 and 17x17 blocks of 16 px (the
    larger still holds when a marker's strokes fill a quarter of the smaller), follow
    gradients and shadows; at a step such as a page edge only pixels deep in a corner
    deviate from them. A board with chalk has almost no dark minority at all (light
    outweighs dark 150 times or more in the generated photos), while a page whose paper is a
    bright minority of the frame can show light outweighing dark up to ~4 times: the ink is
    called light only when light outweighs dark LIGHT_INK_ODDS times.
    """
    half = _pool(luminance, np.add) / 4
    height, width = half.shape
    grid = (max(1, width // 8), max(1, height // 8))
    blocks = np.asarray(Image.fromarray(half, "F").resize(grid, Image.Resampling.BOX))
    deviation = {-1: 0.0, 1: 0.0}  # darker, lighter
    for size in (9, 17):
        for level, sign in ((25, -1), (75, 1)):
            local = ndimage.percentile_filter(blocks, level, size=size, mode="nearest")
            background = Image.fromarray(np.ascontiguousarray(local), "F").resize(
                (width, height), Image.Resampling.BILINEAR
            )
            # Beyond 0.05 only: sensor noise deviates to both sides alike.
            away = sign * (half - np.asarray(background)) - 0.05
            deviation[sign] += float(np.clip(away, 0, None).sum())
    return deviation[1] < LIGHT_INK_ODDS * deviation[-1]


def _pool(channel: np.ndarray, combine: Callable[..., np.ndarray]) -> np.ndarray:
    """Half resolution: each 2x2 block combined by `combine` (np.maximum, np.minimum, np.add)."""
    height, width = channel.shape
    even = np.pad(channel, ((0, height % 2), (0, width % 2)), mode="edge")
    top = combine(even[0::2, 0::2], even[0::2, 1::2])
    return combine(top, combine(even[1::2, 0::2], even[1::2, 1::2]))


def _background(channel: np.ndarray, window: int, first: Filter, second: Filter) -> np.ndarray:
    """Grey closing (max, then min filter) or opening (min, then max) of one channel, the
    second filter SPILL pixels wider.

    The frame is padded by repeating its edge a whole window deep first: a window may then
    slide off the frame, so light that fades towards a border (a vignette, a table along the
    edge) counts as light, not as a broad dark stroke.
    """
    padded = np.pad(channel, window, mode="edge")
    # Pooled and enlarged, a closing runs a pixel or two past a sharp step of light (a shadow's
    # edge) into its darker side, seen as a thin line of ink along it: the second filter
    # reaches SPILL pixels further (a closing, then an erosion) and puts the step back.
    closed = second(first(padded, size=window), size=window + 2 * SPILL)
    return closed[window:-window, window:-window]


def _flatten(rgb: np.ndarray) -> np.ndarray:
    """Ink contrast per pixel with the light flattened: 0 on paper, ~0.85 on a black pen stroke.

    The paper's brightness is a grey closing (dark ink) or opening (chalk: light ink) over a
    window wider than any stroke: it erases strokes and keeps what is broader (gradients,
    vignettes, a shadow's edge, a table at the border). Dark ink's contrast is measured
    relative to that brightness, so a stroke in shadow is as strong as one in full light.
    """
    height, width = rgb.shape[:2]
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luminance = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), np.float32) / 255
    dark = _dark_ink(luminance)
    # Inks absorb at least one colour strongly while a board reflects all three alike: the
    # darkest channel carries a pen's contrast whatever its colour, the brightest a chalk's.
    # Paper may be tinted: the channels are weighed against each other by the paper's level in
    # each (the frame's median), or a red pen on blue paper has the paper's weak red beside its
    # own weak green; a colour the paper hardly reflects shows no ink and is left out.
    if dark:
        paper = np.maximum(np.median(rgb[::4, ::4].reshape(-1, 3), axis=0), 1.0)
        # Weighed against each other only: the brightest keeps its scale, [0, 1].
        used = [
            values * np.float32(paper.max() / (255 * level))
            for values, level in zip((red, green, blue), paper, strict=True)
            if level >= 0.25 * paper.max()
        ]
        channel = np.minimum.reduce(used)
    else:
        channel = np.maximum(np.maximum(red, green), blue).astype(np.float32) / 255
    # Sensor noise and JPEG blocks are finer than any stroke at this size.
    smooth = ndimage.gaussian_filter(channel, 1.0)
    # The background is smooth: estimate it at half resolution, pooled so that strokes fade.
    half = _pool(smooth, np.maximum if dark else np.minimum)
    window = max(4, round(BACKGROUND_WINDOW * min(half.shape)))
    if dark:
        small = _background(half, window, ndimage.maximum_filter, ndimage.minimum_filter)
    else:
        small = _background(half, window, ndimage.minimum_filter, ndimage.maximum_filter)
    back = np.asarray(
        Image.fromarray(np.ascontiguousarray(small), "F").resize(
            (width, height), Image.Resampling.BILINEAR
        )
    )
    if dark:
        return (back - smooth) / np.maximum(back, 0.02)
    return smooth - back


def ink_map(img: Image.Image) -> np.ndarray:
    """Ink strength at working size: bright ink on a dark, flat background."""
    rgb, alpha = _working(img)
    return alpha if alpha is not None else _flatten(rgb)


def _ink_mask(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ink above the paper's level, the pixels that may be ink, and the strongest ink's contrast."""
    # The 0.02 % strongest pixels: a digit has more than that, sensor noise peaks do not count.
    k = max(10, ink.size // 5000)
    strongest = float(np.partition(ink.ravel(), -k)[-k])
    # The paper's level and noise from a quarter of the pixels (as good, faster), those under
    # half the strongest ink's: a digit cropped tightly can cover half the frame.
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


def _remove_lines(mask: np.ndarray) -> np.ndarray:
    """Mask without ruled or squared paper lines or a page edge: thin lines across the frame.

    Lines are found by a Hough vote of the mask's pixels over angles near horizontal and
    vertical; a line must reach across the frame and be thin along most of its length (a
    digit written on a margin line does not make it a stroke). Its pixels are removed except
    where a stroke crosses it (restored by a closing across the line). A lone line that stops
    short of both ends of the frame, with next to nothing else on the page, is a stroke: a 1
    down the page in a fine pen.
    """
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    if len(ys) > 40_000:  # a vote of a fixed sample is as good and bounded in time
        pick = np.random.default_rng(0).choice(len(ys), 40_000, replace=False)
        ys, xs = ys[pick], xs[pick]
    weight = mask.sum() / len(ys)
    thick = max(3, round(0.015 * min(height, width)))
    out = mask.copy()
    erased: list[tuple[bool, float, bool]] = []  # vertical, position, stops short of both ends
    for vertical in (False, True):
        along, across = (ys, xs) if vertical else (xs, ys)
        span = height if vertical else width
        # Every half degree, then the best one to a tenth: off by a quarter of a degree, a
        # line's votes spread over 2-3 bins and a thin one falls under the threshold.
        votes = {float(d): _vote(along, across, d, weight) for d in np.arange(-10, 10.5, 0.5)}
        coarse = max(votes, key=lambda d: votes[d][0].max())
        fine = coarse + np.array([-4, -3, -2, -1, 1, 2, 3, 4]) / 10
        votes.update({float(d): _vote(along, across, d, weight) for d in fine})
        degrees = max(votes, key=lambda d: votes[d][0].max())
        counts, offset = votes[degrees]
        t = math.radians(degrees)
        rho_all = _rho(along, across, t)
        for line in np.flatnonzero(counts >= 0.6 * span):
            if counts[line] < counts[max(0, line - 2) : line + 3].max():
                continue  # the same line, off its centre
            rho = line + offset
            reach = along[np.abs(rho_all - rho) <= 1.5]
            if reach.min() > 0.15 * span or reach.max() < 0.85 * span:
                continue
            band = _line_band(mask, rho, t, vertical, thick)
            if band is None:
                continue
            out = _erase_line(out, mask, rho, t, vertical, band)
            short = min(reach.min(), span - 1 - reach.max()) > 0.01 * span
            erased.append((vertical, rho, short))
    positions = [position for _, position, _ in erased]
    lone = len({vertical for vertical, _, _ in erased}) == 1 and np.ptp(positions) <= thick
    if lone and all(short for _, _, short in erased) and out.sum() < 0.05 * mask.sum():
        return mask
    return out


def _rho(along: np.ndarray, across: np.ndarray, t: float) -> np.ndarray:
    """Each pixel's position across lines at angle `t` (radians) from the axis `along` runs on:
    pixels of one line share it."""
    return across * math.cos(t) - along * math.sin(t)


def _vote(
    along: np.ndarray, across: np.ndarray, degrees: float, weight: float
) -> tuple[np.ndarray, int]:
    """Pixels per line position (rho, 1 px bins) at an angle, and the first bin's rho."""
    t = math.radians(degrees)
    rho = np.round(_rho(along, across, t)).astype(np.int64)
    offset = int(rho.min())
    return np.bincount(rho - offset) * weight, offset


def _line_band(
    mask: np.ndarray, rho: float, t: float, vertical: bool, thick: int
) -> tuple[int, int] | None:
    """The offsets across a line (from its centre `rho`) its ink covers, or None where the ink
    along it is not thin (a long stroke, the edge of a dark region): over the places along it
    where its centre is ink, the median count of ink pixels within `thick` of the centre,
    across it, must be at most `thick` (digits it crosses or runs along are a minority of those
    places). The band holds every offset inked all along the line (in 7 of its 10 tenths): a
    wide line (a page edge's rim) is off its 1 px vote's centre by a pixel or two, and a fixed
    band left a sliver of it beside the digit; a stroke along the line covers fewer tenths."""
    height, width = mask.shape
    span, breadth = (height, width) if vertical else (width, height)
    along = np.arange(span)
    centre = (rho + along * math.sin(t)) / math.cos(t)
    offsets = np.arange(-thick, thick + 1)
    across = np.round(centre[:, None]).astype(np.int64) + offsets
    inside = (across >= 0) & (across < breadth)
    across = np.clip(across, 0, breadth - 1)
    values = (mask[along[:, None], across] if vertical else mask[across, along[:, None]]) & inside
    on = values[:, thick]
    if not on.any() or float(np.median(values[on].sum(1))) > thick:
        return None
    tenths = np.stack([part.mean(0) >= 0.1 for part in np.array_split(values, 10)])
    covered = offsets[tenths.sum(0) >= 7]
    return min(-2, int(covered.min(initial=0))), max(2, int(covered.max(initial=0)))


def _erase_line(
    out: np.ndarray,
    mask: np.ndarray,
    rho: float,
    t: float,
    vertical: bool,
    band: tuple[int, int],
) -> np.ndarray:
    """Clear a line's band (offsets across it from `rho`), keeping the strokes that cross it."""
    height, width = mask.shape
    yy, xx = np.mgrid[0:height, 0:width]
    along, across = (yy, xx) if vertical else (xx, yy)
    offset = _rho(along, across, t) - rho  # within 1.5 % of the offset along the axis
    lo, hi = band
    inside = (offset >= lo - 0.5) & (offset <= hi + 0.5)
    cleared = out & ~inside
    # A closing across the band bridges it where a stroke reaches it from both sides.
    length = hi - lo + 5
    reach = np.ones((1, length) if vertical else (length, 1), bool)
    crossing = ndimage.binary_closing(cleared, reach) & inside & mask
    return cleared | crossing


def _parts(mask: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, list[_Part]]:
    """Connected pieces of ink (8-connected) with their boxes and strength."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return labels, []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    masses = ndimage.sum_labels(ink, labels, index)
    strengths = ndimage.maximum(ink, labels, index)
    height, width = mask.shape
    parts = []
    for label, found in zip(index, ndimage.find_objects(labels), strict=True):
        rows, cols = found
        box = (cols.start, rows.start, cols.stop, rows.stop)
        border = box[0] == 0 or box[1] == 0 or box[2] == width or box[3] == height
        area, mass, strength = int(areas[label - 1]), masses[label - 1], strengths[label - 1]
        parts.append(_Part(int(label), box, area, float(mass), float(strength), border))
    return labels, parts


def _score(part: _Part) -> float:
    # Ink at the frame's edge is mostly the table, a page edge or a shadow, not the digit.
    return part.mass * (0.05 if part.border else 1.0)


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Chessboard distance between two boxes (0 when they overlap)."""
    dx = max(a[0] - b[2], b[0] - a[2], 0)
    dy = max(a[1] - b[3], b[1] - a[3], 0)
    return max(dx, dy)


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _unframed(found: _Found) -> list[_Part]:
    """The pieces of ink less circles or boxes drawn around the digit: pieces whose holes hold
    other ink of at least FRAMED_MASS of their own (a 0's speck is too little)."""
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


def _bar_over(part: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> bool:
    """Whether a piece is a bar written apart over the digit's top (a 5's, a 7's): at least
    twice as wide as tall and 0.3 as wide as the digit, over it, and above it by at most
    BAR_GAP of its height."""
    left, top, right, bottom = part
    width, height = box[2] - box[0], box[3] - box[1]
    bar = right - left >= max(2 * (bottom - top), 0.3 * width)
    return bar and _overlap(part, box) >= 0.3 and 0 <= box[1] - bottom <= BAR_GAP * height


def _digit_parts(parts: list[_Part]) -> list[_Part]:
    """The strongest piece of ink and the pieces near it (a broken stroke, a detached bar)."""
    main = max(parts, key=_score)
    chosen = [main]
    box = main.box
    grew = True
    while grew:
        grew = False
        reach = 0.2 * max(box[2] - box[0], box[3] - box[1])
        for part in parts:
            if part in chosen or part.border or part.mass < SPECK_MASS * main.mass:
                continue
            if _gap(part.box, box) <= reach or _bar_over(part.box, box):
                chosen.append(part)
                box = _union([box, part.box])
                grew = True
    return chosen


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


def _redraw(ink: np.ndarray, keep: np.ndarray, peak: float) -> np.ndarray:
    """The digit as a clean shape (float in [0, 1]) at >= CROP_SIDE px, MNIST stroke width.

    The crop is enlarged if small, thresholded at half the stroke's contrast, and its
    strokes thickened or thinned to MNIST's range: then scaling down draws anti-aliased
    edges the way MNIST's were drawn from binary scans.
    """
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad = 2
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


def _to_28(shape: np.ndarray) -> np.ndarray:
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


@dataclass(frozen=True)
class _Found:
    """Everything found in one image: the ink and its connected pieces."""

    rgb: np.ndarray
    contrast: np.ndarray  # ink contrast above the paper's level
    peak: float  # the strongest ink's contrast
    labels: np.ndarray  # each pixel's piece (0: not ink)
    parts: list[_Part]


def _find(rgb: np.ndarray, ink: np.ndarray) -> _Found:
    contrast, mask, peak = _ink_mask(ink)
    labels, parts = _parts(_remove_lines(mask), contrast)
    parts = [p for p in parts if p.strength >= INK_LEVEL * peak]
    if not parts:
        raise ImageError("no digit found (no ink stands out from the background)")
    return _Found(rgb, contrast, peak, labels, parts)


def _analyse(img: Image.Image) -> _Found:
    rgb, alpha = _working(img)
    return _find(rgb, alpha if alpha is not None else _flatten(rgb))


def _mnist(found: _Found, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 28x28 image and the stroke-normalized crop of the ink in `keep`."""
    shape = _redraw(found.contrast, keep, found.peak)
    return _to_28(shape), shape


def _box(keep: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def _digits(found: _Found, keeps: list[np.ndarray]) -> list[Preprocessed]:
    """Each mask's ink as an MNIST-style digit."""
    made = []
    for keep in keeps:
        image, crop = _mnist(found, keep)
        frame = (found.labels.shape[1], found.labels.shape[0])
        made.append(Preprocessed(image, _box(keep), crop=crop, frame=frame))
    return made


def _trace(found: _Found, digits: list[Preprocessed]) -> Steps:
    return Steps(
        found.rgb,
        np.clip(found.contrast / found.peak, 0, 1),
        _keep(found, found.parts),
        [d.box for d in digits],
        [d.crop for d in digits if d.crop is not None],
        [d.image for d in digits],
    )


def _keep(found: _Found, parts: list[_Part]) -> np.ndarray:
    return np.isin(found.labels, [p.label for p in parts])


def _one_digit(found: _Found) -> np.ndarray:
    """Where the digit of a single-digit image is: its strongest piece and the pieces near it."""
    return _keep(found, _digit_parts(_unframed(found)))


def preprocess_image(img: Image.Image, *, steps: bool = False) -> Preprocessed:
    """An opened image -> its MNIST-style 28x28 version (one digit)."""
    found = _analyse(img)
    (digit,) = _digits(found, [_one_digit(found)])
    return replace(digit, steps=_trace(found, [digit])) if steps else digit


def to_mnist(ink: np.ndarray) -> Preprocessed:
    """An ink map (bright ink on dark) -> the 28x28 image of the digit in it."""
    found = _find(np.zeros((*ink.shape, 3), np.uint8), ink)
    return _digits(found, [_one_digit(found)])[0]


def preprocess(path: str | Path, *, steps: bool = False) -> Preprocessed:
    """Read an image file and return its MNIST-style 28x28 version."""
    img = open_image(path)
    try:
        return preprocess_image(img, steps=steps)
    except ImageError as exc:
        raise ImageError(f"{exc}: {path}") from None


# --- a row of digits --------------------------------------------------------------------------

# MNIST digits are at most ~1.25 times as wide as tall (99th percentile, 1.1 for 95 %): ink
# wider than SPLIT_ASPECT heights may be touching digits (two 1s side by side are ~0.5), and
# is also read cut in pieces; wider than WHOLE_ASPECT it is never read as one digit.
SPLIT_ASPECT = 0.5
WHOLE_ASPECT = 1.4
# A touching digit is ~0.45-1.1 heights wide: cuts are tried where the ink is thinnest.
DIGIT_ASPECT = 0.7
# Ink that could be one digit is cut only into pieces at least this fraction of the row's
# height: digits in a number are about as tall as each other, while a cut through one wide
# digit (a 6's loop, an 8's half) leaves a shorter piece.
CUT_HEIGHT = 0.7
# A piece of ink at least TALL_STROKE of the row's height is a digit or part of one, a shorter
# one a speck or a loose stroke; a cut piece must hold such a stroke too: MNIST digits carry
# specks, and those beside a 1 ("1:") spread over as much height as a digit.
TALL_STROKE = 0.45
# A bar along a digit's top (a 5's, written apart) may leave it this many heights wide, as
# wide as MNIST's widest digits (above); other loose pieces join a digit within one height.
BAR_SPAN = 1.25


def _row_parts(parts: list[_Part]) -> tuple[list[_Part], int]:
    """The pieces of ink in the row of digits (not at the border, in line) and its height."""
    inside = [p for p in parts if not p.border] or parts
    biggest = max(p.mass for p in inside)
    big = [p for p in inside if p.mass >= 0.1 * biggest]
    # The second tallest: pieces of broken digits must not make it smaller, nor one piece
    # merged with a margin line or a scribble larger.
    heights = sorted((p.box[3] - p.box[1] for p in big), reverse=True)
    height = heights[1] if len(heights) >= 3 else heights[0]
    top = float(np.median([p.box[1] for p in big]))
    bottom = float(np.median([p.box[3] for p in big]))
    margin = 0.5 * height
    pieces = [
        p
        for p in inside
        if p.mass >= SPECK_MASS * biggest and p.box[3] > top - margin and p.box[1] < bottom + margin
    ]
    return pieces, height


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """How much two boxes overlap left to right, as a fraction of the narrower one."""
    shared = min(a[2], b[2]) - max(a[0], b[0])
    return shared / max(1, min(a[2] - a[0], b[2] - b[0]))


def _home(groups: list[list[_Part]], part: _Part, height: int) -> int | None:
    """The group a small piece belongs to: the one it sits over or under, else the one it
    (nearly) touches if together they are no wider than a digit (than the widest digit for a
    bar along its top); None if neither."""
    boxes = [_union([p.box for p in g]) for g in groups]
    if not boxes:
        return None
    over = max(range(len(boxes)), key=lambda i: _overlap(boxes[i], part.box))
    if _overlap(boxes[over], part.box) >= 0.3:
        return over
    near = min(range(len(boxes)), key=lambda i: _gap(boxes[i], part.box))
    left, top, right, bottom = part.box
    bar = right - left > max(bottom - top, 0.3 * height) and top <= boxes[near][1] + 0.15 * height
    union = _union([boxes[near], part.box])
    if (
        _gap(boxes[near], part.box) <= 0.1 * height
        and union[2] - union[0] <= (BAR_SPAN if bar else 1.0) * height
    ):
        return near
    return None


def _columns(pieces: list[_Part], height: int) -> list[list[_Part]]:
    """Pieces grouped into digits, left to right.

    Tall pieces are digits (or touching digits), and tall pieces stacked over each other are
    one broken digit. A small piece belongs to the digit it sits over or under, or else to the
    digit it (nearly) touches if the two stay no wider than a digit (a 5's bar, a dotted or
    broken stroke); small pieces close together that are as tall as a digit together are a
    digit broken apart; the rest (a dash, specks) belong to none.
    """
    tall = [p for p in pieces if p.box[3] - p.box[1] >= TALL_STROKE * height]
    small = [p for p in pieces if p.box[3] - p.box[1] < TALL_STROKE * height]
    groups: list[list[_Part]] = []
    for part in sorted(tall, key=lambda p: p.box[0] + p.box[2]):
        if groups and _overlap(_union([p.box for p in groups[-1]]), part.box) >= 0.5:
            groups[-1].append(part)
        else:
            groups.append([part])
    loose = list(small)
    placed = True
    while placed:  # until no piece finds a digit: a dotted stroke joins dot by dot
        placed = False
        for part in list(loose):
            home = _home(groups, part, height)
            if home is not None:
                groups[home].append(part)
                loose.remove(part)
                placed = True
    clusters: list[list[_Part]] = []
    for part in sorted(loose, key=lambda p: p.box[0]):
        near = [c for c in clusters if _gap(_union([p.box for p in c]), part.box) <= 0.3 * height]
        if near:
            near[0].append(part)
        else:
            clusters.append([part])
    for cluster in clusters:
        box = _union([p.box for p in cluster])
        if box[3] - box[1] >= TALL_STROKE * height:
            groups.append(cluster)
    return sorted(groups, key=lambda g: sum(_union([p.box for p in g])[0:3:2]))


def _cut(keep: np.ndarray, columns: list[int]) -> list[np.ndarray]:
    """The mask cut apart at `columns` (vertical lines), left to right, without empty pieces."""
    pieces = []
    edges = [0, *columns, keep.shape[1]]
    for a, b in itertools.pairwise(edges):
        piece = np.zeros_like(keep)
        piece[:, a:b] = keep[:, a:b]
        if piece.any():
            pieces.append(piece)
    return pieces


def _tallest(piece: np.ndarray) -> int:
    """The height of the tallest connected stroke in a piece of ink."""
    labels = ndimage.label(piece, structure=np.ones((3, 3)))[0]
    return max(rows.stop - rows.start for rows, _ in ndimage.find_objects(labels))


def _readings(keep: np.ndarray, height: int) -> list[list[np.ndarray]]:
    """Ways to read one group of ink: whole, and, if it is wide enough to be touching digits,
    cut into 2, 3, ... pieces where the ink is thinnest (the model then picks the likeliest)."""
    left, top, right, bottom = _box(keep)
    width = right - left
    aspect = width / max(1, height)
    whole = aspect <= WHOLE_ASPECT
    options = [[keep]] if whole else []
    if aspect < SPLIT_ASPECT:
        return options
    # Ink per column, lightly smoothed: touching strokes are thin where digits meet.
    profile = ndimage.uniform_filter1d(keep[top:bottom, left:right].sum(0).astype(float), 3)
    most = max(2, math.ceil(aspect / DIGIT_ASPECT))
    tried: set[tuple[int, ...]] = set()
    for count in range(2, most + 1):
        # Cuts at the thinnest column near each even position; for two pieces also at the
        # three thinnest columns of the middle 60 %, at least a tenth of the width apart.
        step = width / count
        cuts = []
        for i in range(1, count):
            lo = max(1, round(i * step - 0.35 * step))
            hi = min(width - 1, round(i * step + 0.35 * step))
            cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else round(i * step))
        candidates = [tuple(sorted(set(cuts)))]
        if count == 2:
            for column in np.argsort(profile, kind="stable"):
                if not 0.2 * width <= column <= 0.8 * width:
                    continue
                if all(abs(column - c[0]) >= 0.1 * width for c in candidates):
                    candidates.append((int(column),))
                if len(candidates) == 4:
                    break
        for columns in candidates:
            if columns in tried:
                continue
            tried.add(columns)
            pieces = _cut(keep, [left + c for c in columns])
            if len(pieces) != count:
                continue
            if whole and min(_box(p)[3] - _box(p)[1] for p in pieces) < CUT_HEIGHT * height:
                continue  # one digit's ink cut into a piece shorter than a digit
            strokes = (_tallest(p[top:bottom, left:right]) for p in pieces)  # in the group's box
            if whole and min(strokes) < TALL_STROKE * height:
                continue  # or into a piece without a stroke of its own: specks beside a 1
            options.append(pieces)
    return options or [[keep]]


@dataclass(frozen=True)
class Row:
    """A number (a year, a phone number): its groups of ink, left to right, each with the ways
    to read it (whole, or cut where digits touch), and for each pair of neighbours that could
    be one digit broken in two, that digit (else None). `digits` takes each group whole."""

    readings: list[list[list[Preprocessed]]]
    joined: list[Preprocessed | None] = field(default_factory=list)
    steps: Steps | None = None
    height: int = 0  # the digits' height in the working image (0: unknown)

    @property
    def digits(self) -> list[Preprocessed]:
        return [d for options in self.readings for d in options[0]]


def _joinable(a: np.ndarray, b: np.ndarray, height: int) -> bool:
    """Whether two neighbouring groups could be one digit broken in two: close together, no
    wider than a digit, and one of them too short to be a whole digit."""
    left, top, right, bottom = _box(a)
    start, upper, end, lower = _box(b)
    close = start - right <= 0.15 * height and end - left <= height
    return close and min(bottom - top, lower - upper) < 0.8 * height


def segment_image(img: Image.Image, *, steps: bool = False) -> Row:
    """An opened image of digits in a row -> each group's readings as 28x28 images."""
    found = _analyse(img)
    pieces, height = _row_parts(found.parts)
    keeps = [_keep(found, group) for group in _columns(pieces, height)]
    readings = [[_digits(found, option) for option in _readings(k, height)] for k in keeps]
    joined = [
        _digits(found, [a | b])[0] if _joinable(a, b, height) else None
        for a, b in itertools.pairwise(keeps)
    ]
    first = [d for options in readings for d in options[0]]
    return Row(readings, joined, _trace(found, first) if steps else None, height)


def segment(path: str | Path, *, steps: bool = False) -> Row:
    """Read an image file of digits in a row and return each digit's 28x28 image."""
    img = open_image(path)
    try:
        return segment_image(img, steps=steps)
    except ImageError as exc:
        raise ImageError(f"{exc}: {path}") from None


def _tile(image: Image.Image, title: str, height: int) -> Image.Image:
    scale = height / image.height
    size = (max(1, round(image.width * scale)), height)
    resample = Image.Resampling.NEAREST if scale > 2 else Image.Resampling.BILINEAR
    tile = Image.new("RGB", (max(size[0], 8 * len(title)), height + 16), (40, 40, 40))
    tile.paste(image.convert("RGB").resize(size, resample), (0, 16))
    ImageDraw.Draw(tile).text((2, 2), title, fill=(255, 255, 255))
    return tile


def steps_panel(steps: Steps, height: int = 192) -> Image.Image:
    """One picture of every step: photo, flattened light, ink mask and boxes, crops, 28x28s."""

    def grey(values: np.ndarray) -> Image.Image:
        return Image.fromarray((np.clip(values, 0, 1) * 255).astype(np.uint8), "L")

    photo = Image.fromarray(steps.photo, "RGB")
    mask = grey(steps.mask.astype(np.float32) * 0.6).convert("RGB")
    draw = ImageDraw.Draw(mask)
    for left, top, right, bottom in steps.boxes:
        draw.rectangle((left, top, right - 1, bottom - 1), outline=(255, 60, 60), width=2)
    tiles = [
        _tile(photo, "photo", height),
        _tile(grey(steps.ink), "flattened light", height),
        _tile(mask, "mask, digit box", height),
    ]
    tiles += [_tile(grey(c), "crop" if i == 0 else "", height) for i, c in enumerate(steps.crops)]
    tiles += [_tile(grey(m), "28x28" if i == 0 else "", height) for i, m in enumerate(steps.images)]
    gap = 6
    panel = Image.new(
        "RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), height + 16), (0, 0, 0)
    )
    x = 0
    for tile in tiles:
        panel.paste(tile, (x, 0))
        x += tile.width + gap
    return panel
