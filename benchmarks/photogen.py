"""Photographed-style images of handwritten digits made from MNIST digits, one recipe each.

A digit becomes a pen (or chalk) stroke on paper at photo resolution; then light, paper, optics,
sensor and file format are applied, each drawn from a seeded generator. The benchmark
(`benchmarks/photos.py`) and the tests (`tests/test_photos*.py`) share this module, so they
measure the same thing. Each condition is one strong departure from a mild, ordinary photo.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

# Reflectances in [0, 1] per RGB channel.
DARK_INKS = ((0.08, 0.08, 0.1), (0.1, 0.1, 0.2), (0.2, 0.2, 0.22))
COLOUR_INKS = {"blue": (0.12, 0.2, 0.62), "red": (0.72, 0.12, 0.12), "green": (0.1, 0.45, 0.2)}
PAPER_TINTS = ((0.95, 0.88, 0.6), (0.98, 0.8, 0.85), (0.75, 0.85, 0.98), (0.8, 0.95, 0.8))
BOARDS = ((0.1, 0.18, 0.13), (0.08, 0.08, 0.09), (0.16, 0.17, 0.18))
TABLES = ((0.45, 0.3, 0.18), (0.12, 0.12, 0.13), (0.55, 0.55, 0.56))
RULE_COLOURS = ((0.55, 0.7, 0.92), (0.6, 0.6, 0.62))
# EXIF orientation -> the transpose that stores an upright picture so a viewer undoes it.
STORE_ROTATED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

Colour = tuple[float, float, float]


@dataclass
class Scene:
    """Everything one photo is made of; the defaults are a mild, ordinary phone photo."""

    size: tuple[int, int] = (800, 600)  # width, height of the rendered frame
    digit_frac: float = 0.45  # digit height (its box's longer side) / the frame's shorter side
    angle: float = 0.0  # degrees: the slant of the whole digit (or row of digits)
    # pen (the MNIST stroke), thin (narrow constant width), marker (widened), broad (at least
    # pen_width along the skeleton)
    pen: str = "pen"
    pen_width: float = 0.0  # thin: stroke width; marker: added width (fractions of digit height)
    ink: Colour = DARK_INKS[0]
    paper: Colour = (0.92, 0.92, 0.9)
    chalk: bool = False  # grainy light strokes on a dark board
    light: str = "flat"  # flat, gradient, vignette, shadow
    light_args: dict[str, float] = field(default_factory=dict)
    background: str = "plain"  # plain, table, ruled, squared
    background_args: dict[str, float] = field(default_factory=dict)
    blur: float = 0.6  # Gaussian sigma in pixels (optics and focus)
    noise: float = 0.01  # sensor noise, standard deviation at mid grey, in [0, 1] units
    jpeg: int | None = 92  # JPEG quality; None: PNG
    transparent: bool = False  # RGBA PNG: the digit alone on a transparent background
    orientation: int = 1  # EXIF orientation tag; the pixels are stored so a viewer shows it upright
    upscale: int = 1  # enlarge the rendered frame by this factor before encoding (12 MP photos)
    touch: bool = False  # a row of digits: two neighbours touch (else they stand apart)
    # Cropped to the ink, this margin left at its left, top, right and bottom (fractions of its
    # box's longer side; below 0 the crop cuts into the digit).
    crop: tuple[float, float, float, float] | None = None
    low_side: int = 0  # then shrunk to this long side, pixels averaged (a low-resolution scan)
    side: int = 0  # then resized to this long side with `resample` (nearest, bilinear, bicubic)
    resample: str = "bilinear"


@dataclass(frozen=True)
class Photo:
    """One encoded image file and what it shows."""

    data: bytes
    suffix: str  # ".jpg" or ".png"
    label: str  # the digits, left to right
    condition: str
    box: tuple[float, float, float, float]  # the ink's left, top, right, bottom in [0, 1]
    sources: tuple[int, ...] = ()  # the digits' indices in the images given to `photo_set`


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _pick(rng: np.random.Generator, options: Sequence[Colour]) -> Colour:
    return options[int(rng.integers(len(options)))]


def base_scene(rng: np.random.Generator) -> Scene:
    """A mild photo: white-ish paper, dark pen, nearly even light, a little blur, noise, JPEG."""
    long_side = int(rng.integers(560, 901))
    short_side = int(long_side / float(rng.choice([4 / 3, 3 / 2, 16 / 9])))
    size = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
    paper = np.clip(_u(rng, 0.85, 0.95) + rng.uniform(-0.02, 0.02, 3), 0, 1)
    return Scene(
        size=size,
        digit_frac=_u(rng, 0.25, 0.6),
        angle=_u(rng, -6, 6),
        ink=_pick(rng, DARK_INKS),
        paper=(float(paper[0]), float(paper[1]), float(paper[2])),
        light_args={"low": _u(rng, 0.85, 1.0), "direction": _u(rng, 0, 360)},
        blur=_u(rng, 0.4, 1.0),
        noise=_u(rng, 0.005, 0.015),
        jpeg=int(rng.integers(85, 96)),
    )


def _gradient(s: Scene, rng: np.random.Generator) -> Scene:
    # The dark end of the frame gets 15-50 % of the light of the bright end.
    args = {"low": _u(rng, 0.15, 0.5), "direction": _u(rng, 0, 360)}
    return replace(s, light="gradient", light_args=args)


def _vignette(s: Scene, rng: np.random.Generator) -> Scene:
    # Corners at 20-50 % of the light at the bright spot, which sits a little off-centre.
    args = {
        "strength": _u(rng, 0.5, 0.8),
        "power": _u(rng, 1.5, 3.0),
        "cx": _u(rng, 0.35, 0.65),
        "cy": _u(rng, 0.35, 0.65),
    }
    return replace(s, light="vignette", light_args=args)


def _shadow(s: Scene, rng: np.random.Generator) -> Scene:
    # A hand's or phone's shadow: a soft-edged half-plane whose edge crosses the digit.
    args = {
        "depth": _u(rng, 0.4, 0.75),
        "softness": _u(rng, 0.005, 0.06),  # penumbra width, fraction of the frame's short side
        "direction": _u(rng, 0, 360),
        "offset": _u(rng, -0.3, 0.3),  # edge position from the digit's centre, in digit heights
    }
    return replace(s, light="shadow", light_args=args)


def _colour(s: Scene, rng: np.random.Generator) -> Scene:
    tint = np.asarray(_pick(rng, PAPER_TINTS))
    paper = 0.92 + (tint - 0.92) * _u(rng, 0.4, 1.0)
    name = str(rng.choice(sorted(COLOUR_INKS)))
    ink = np.clip(np.asarray(COLOUR_INKS[name]) * rng.uniform(0.8, 1.2, 3), 0, 1)
    return replace(s, paper=_colour3(paper), ink=_colour3(ink))


def _colour3(values: np.ndarray) -> Colour:
    return (float(values[0]), float(values[1]), float(values[2]))


def _noise(s: Scene, rng: np.random.Generator) -> Scene:
    return replace(s, noise=_u(rng, 0.03, 0.1))


def _blur(s: Scene, rng: np.random.Generator) -> Scene:
    # Sigma up to a third of an MNIST stroke (strokes are ~12 % of the digit's height).
    height = s.digit_frac * min(s.size)
    return replace(s, blur=max(1.5, _u(rng, 0.01, 0.04) * height))


def _jpeg(s: Scene, rng: np.random.Generator) -> Scene:
    return replace(s, jpeg=int(rng.integers(40, 91)), noise=max(s.noise, 0.02))


def _scale(s: Scene, rng: np.random.Generator) -> Scene:
    return replace(s, digit_frac=_u(rng, 0.1, 0.8))


def _border(s: Scene, rng: np.random.Generator) -> Scene:
    # The table shows along one or two sides, 4-20 % deep, the page edge slightly tilted.
    sides = rng.permutation(4)[: int(rng.integers(1, 3))]
    args = {f"side{int(i)}": _u(rng, 0.04, 0.2) for i in sides}
    args |= {"tilt": _u(rng, -6, 6), "kind": float(rng.integers(len(TABLES)))}
    return replace(s, background="table", background_args=args)


def _ruled(s: Scene, rng: np.random.Generator) -> Scene:
    args = {
        "spacing": _u(rng, 0.45, 1.3),  # in digit heights: lines above, below or through it
        "tilt": _u(rng, -3, 3),
        "margin": float(rng.random() < 0.4),  # a red margin line
        "colour": float(rng.integers(len(RULE_COLOURS))),
    }
    return replace(s, background="ruled", background_args=args)


def _squared(s: Scene, rng: np.random.Generator) -> Scene:
    args = {
        "spacing": _u(rng, 0.15, 0.4),
        "tilt": _u(rng, -3, 3),
        "colour": float(rng.integers(len(RULE_COLOURS))),
    }
    return replace(s, background="squared", background_args=args)


def _thin(s: Scene, rng: np.random.Generator) -> Scene:
    # A fine pen on a big digit: strokes 2-5 % of the digit's height (MNIST's are ~12 %).
    return replace(s, pen="thin", pen_width=_u(rng, 0.02, 0.05))


def _marker(s: Scene, rng: np.random.Generator) -> Scene:
    # A felt marker: strokes widened by 6-14 % of the digit's height (to ~20-25 %).
    return replace(s, pen="marker", pen_width=_u(rng, 0.06, 0.14))


def _chalk(s: Scene, rng: np.random.Generator) -> Scene:
    board = np.asarray(_pick(rng, BOARDS)) * _u(rng, 0.8, 1.3)
    chalk = (0.9, 0.9, 0.86) if rng.random() < 0.7 else (0.92, 0.85, 0.5)
    args = {"strength": _u(rng, 0.1, 0.4), "power": 2.0, "cx": 0.5, "cy": 0.5}
    return replace(
        s, paper=_colour3(board), ink=chalk, chalk=True, light="vignette", light_args=args
    )


def _transparent(s: Scene, rng: np.random.Generator) -> Scene:
    # A digit drawn in a paint program: black, blue or white ink, nothing behind it.
    side = int(rng.integers(120, 700))
    ink = ((0.0, 0.0, 0.0), (0.1, 0.2, 0.7), (1.0, 1.0, 1.0))[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
    return replace(
        s,
        size=(side, int(side * _u(rng, 0.7, 1.3))),
        digit_frac=_u(rng, 0.3, 0.9),
        ink=ink,
        transparent=True,
        jpeg=None,
        blur=0.0,
        noise=0.0,
    )


def _cropped(s: Scene, rng: np.random.Generator) -> Scene:
    # The photo cropped to the digit, 0-5 % of it left around: ink covers up to half the frame.
    return replace(s, crop=(_u(rng, 0.0, 0.05),) * 4)


def _filled(s: Scene, rng: np.random.Generator, margin_px: float = 3) -> Scene:
    """A digit filling its image, at 28-400 px: 0-`margin_px` px of its background around it.

    Mostly a photo of dark ink on paper; else a digital image, black on white or MNIST's white
    on black.
    """
    side = int(rng.integers(28, 401))
    # Margins in pixels of the final image: a fraction of the digit's box there (~0.9 of it).
    crop = tuple(_u(rng, 0, margin_px) / (0.9 * side) for _ in range(4))
    s = replace(s, crop=crop, side=side, resample=str(rng.choice(["bilinear", "bicubic"])))
    kind = rng.random()
    if kind < 0.6:
        return s
    black, white = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    paper, ink = (white, black) if kind < 0.85 else (black, white)
    jpeg = None if rng.random() < 0.7 else int(rng.integers(75, 96))
    return replace(s, paper=paper, ink=ink, noise=0.0, blur=_u(rng, 0.0, 0.8), jpeg=jpeg)


def _tight(s: Scene, rng: np.random.Generator) -> Scene:
    return _filled(s, rng)


def _thick(s: Scene, rng: np.random.Generator) -> Scene:
    # A broad marker filling the image: strokes of 15-25 % of the digit's height along its
    # skeleton (MNIST's are ~12 %), half of them out of focus by up to a sixth of a stroke.
    s = replace(_filled(s, rng), pen="broad", pen_width=_u(rng, 0.15, 0.25))
    if rng.random() < 0.5:
        s = replace(s, blur=max(s.blur, _u(rng, 0.01, 0.04) * s.digit_frac * min(s.size)))
    return s


def _lowres(s: Scene, rng: np.random.Generator, resample: str) -> Scene:
    # The digit scanned at 8-16 px (0-1 px around it), then shown at 64-512 px.
    s = _filled(s, rng)
    low = int(rng.integers(8, 17))
    crop = tuple(_u(rng, 0, 1) / low for _ in range(4))
    return replace(s, crop=crop, low_side=low, side=int(rng.integers(64, 513)), resample=resample)


def _lowres_nearest(s: Scene, rng: np.random.Generator) -> Scene:
    return _lowres(s, rng, "nearest")


def _lowres_smooth(s: Scene, rng: np.random.Generator) -> Scene:
    return _lowres(s, rng, str(rng.choice(["bilinear", "bicubic"])))


def _edge(s: Scene, rng: np.random.Generator) -> Scene:
    # The digit at one or two edges of the image, cut off there by up to 8 % of its size (1.6
    # px of MNIST's 20 px box); up to 30 % of its size of background on the other sides.
    s = _filled(s, rng)
    cut = rng.permutation(4)[: int(rng.integers(1, 3))]
    crop = [-_u(rng, 0, 0.08) if i in cut else _u(rng, 0, 0.3) for i in range(4)]
    return replace(s, crop=(crop[0], crop[1], crop[2], crop[3]))


def _exif(s: Scene, rng: np.random.Generator) -> Scene:
    return replace(s, orientation=int(rng.integers(2, 9)))


def _large(s: Scene, rng: np.random.Generator) -> Scene:
    # 4000x3000 (12 MP): rendered at a quarter and enlarged, as fine detail is not the point.
    size = (1000, 750) if rng.random() < 0.6 else (750, 1000)
    return replace(s, size=size, upscale=4, jpeg=int(rng.integers(80, 93)))


def _clean(s: Scene, rng: np.random.Generator) -> Scene:
    return s


Recipe = Callable[[Scene, np.random.Generator], Scene]
# Recipes that change the same thing are alternatives; "mixed" takes one from three groups.
_GROUPS: tuple[tuple[Recipe, ...], ...] = (
    (_gradient, _vignette, _shadow),
    (_border, _ruled, _squared),
    (_thin, _marker),
    (_colour,),
    (_noise,),
    (_blur,),
    (_jpeg,),
    (_scale,),
)


def _mixed(s: Scene, rng: np.random.Generator) -> Scene:
    for group in rng.permutation(len(_GROUPS))[:3]:
        options = _GROUPS[int(group)]
        s = options[int(rng.integers(len(options)))](s, rng)
    return s


RECIPES: dict[str, Recipe] = {
    "clean": _clean,
    "gradient": _gradient,
    "vignette": _vignette,
    "shadow": _shadow,
    "colour": _colour,
    "noise": _noise,
    "blur": _blur,
    "jpeg": _jpeg,
    "scale": _scale,
    "border": _border,
    "ruled": _ruled,
    "squared": _squared,
    "thin": _thin,
    "marker": _marker,
    "chalk": _chalk,
    "transparent": _transparent,
    "cropped": _cropped,
    "exif": _exif,
    "large": _large,
    "mixed": _mixed,
    "tight": _tight,
    "thick": _thick,
    "lowres_nearest": _lowres_nearest,
    "lowres_smooth": _lowres_smooth,
    "edge": _edge,
}
CONDITIONS = tuple(RECIPES)
# The conditions a row of digits (`--multi`) is drawn under: a photo with paper around it.
ROW_CONDITIONS = (*CONDITIONS[: CONDITIONS.index("cropped")], "exif")


def _thin_mask(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: the one-pixel-wide skeleton of a binary shape."""
    img = np.pad(mask, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            # Neighbours clockwise from north: p2 .. p9.
            p = [
                img[:-2, 1:-1],
                img[:-2, 2:],
                img[1:-1, 2:],
                img[2:, 2:],
                img[2:, 1:-1],
                img[2:, :-2],
                img[1:-1, :-2],
                img[:-2, :-2],
            ]
            count = sum(q.astype(np.int32) for q in p)
            turns = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            if step == 0:
                side = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                side = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            drop = (c == 1) & (count >= 2) & (count <= 6) & (turns == 1) & side
            if drop.any():
                c[drop] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Low-frequency noise in [0, 1]: drawn small, smoothed and enlarged (cheap at any size)."""
    small = (max(2, round(shape[0] / scale)), max(2, round(shape[1] / scale)))
    base = ndimage.gaussian_filter(rng.random(small, dtype=np.float32), 1.0)
    base = (base - base.min()) / max(float(np.ptp(base)), 1e-6)
    img = Image.fromarray(base).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(img)


def glyph(digit: np.ndarray, height: float, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage in [0, 1] of one MNIST digit (28x28 uint8) drawn `height` pixels tall."""
    src = digit.astype(np.float32) / 255
    rows, cols = np.flatnonzero(src.max(1) > 0.1), np.flatnonzero(src.max(0) > 0.1)
    src = np.pad(src[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 2)
    scale = height / max(len(rows), len(cols))
    theta = math.radians(scene.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    margin = 2 + math.ceil(scene.pen_width * height)
    in_h, in_w = src.shape
    out_h = math.ceil((abs(cos) * in_h + abs(sin) * in_w) * scale) + 2 * margin
    out_w = math.ceil((abs(sin) * in_h + abs(cos) * in_w) * scale) + 2 * margin
    # affine_transform maps output (row, col) to input coordinates: rotate, then shrink.
    matrix = np.array([[cos, sin], [-sin, cos]]) / scale
    centre_in = np.array([(in_h - 1) / 2, (in_w - 1) / 2])
    offset = centre_in - matrix @ np.array([(out_h - 1) / 2, (out_w - 1) / 2])
    u = ndimage.affine_transform(src, matrix, offset, output_shape=(out_h, out_w), order=3)
    # MNIST's stroke edge is its 0.5 level: a 1-pixel anti-aliased edge around it.
    gy, gx = np.gradient(u)
    alpha = np.clip(0.5 + (u - 0.5) / (np.hypot(gy, gx) + 1e-3), 0, 1)
    radius = scene.pen_width * height / 2
    if scene.pen in ("thin", "broad"):
        distance = ndimage.distance_transform_edt(~_thin_mask(u > 0.5))
        stroke = np.clip(max(radius, 0.6) + 0.5 - distance, 0, 1)
        # A broad marker is never narrower than the writer's own stroke (a filled loop stays).
        alpha = np.maximum(alpha, stroke) if scene.pen == "broad" else stroke
    elif scene.pen == "marker":
        distance = ndimage.distance_transform_edt(u <= 0.5)
        alpha = np.maximum(alpha, np.clip(radius + 0.5 - distance, 0, 1))
    if scene.chalk:
        grain = ndimage.gaussian_filter(rng.standard_normal(alpha.shape, dtype=np.float32), 0.8)
        alpha = alpha * np.clip(0.75 + 1.2 * grain / max(float(grain.std()), 1e-6) * 0.3, 0, 1)
    else:  # pen pressure: the ink is 75-100 % as dark along the stroke
        alpha = alpha * (1 - 0.25 * _smooth_field(rng, alpha.shape, height / 4))
    rows, cols = np.flatnonzero(alpha.max(1) > 0.02), np.flatnonzero(alpha.max(0) > 0.02)
    return alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)


def _row(
    digits: Sequence[np.ndarray], scene: Scene, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """The digits side by side (ink coverage) and the digit height used."""
    w, h = scene.size
    height = scene.digit_frac * min(w, h)
    if len(digits) > 1:  # a number must fit across the frame: ~0.75 digit heights per digit
        height = min(height, 0.85 * w / (0.75 * len(digits)))
    while True:
        parts = [glyph(d, height * _u(rng, 0.92, 1.08), scene, rng) for d in digits]
        # Digits written apart: gaps of 4-35 % of their height between their boxes; with
        # `touch`, one pair's boxes overlap by 2-8 % of it, so their strokes usually meet.
        gaps = [round(_u(rng, 0.04, 0.35) * height) for _ in parts[1:]]
        if scene.touch and gaps:
            gaps[int(rng.integers(len(gaps)))] = round(_u(rng, -0.08, -0.02) * height)
        shifts = [round(_u(rng, -0.05, 0.05) * height) for _ in parts]
        width = sum(p.shape[1] for p in parts) + sum(gaps)
        top = min(s - p.shape[0] // 2 for p, s in zip(parts, shifts, strict=True))
        bottom = max(s - p.shape[0] // 2 + p.shape[0] for p, s in zip(parts, shifts, strict=True))
        if width <= 0.94 * w and bottom - top <= 0.94 * h:
            break
        height *= 0.9
    row = np.zeros((bottom - top, width), np.float32)
    x = 0
    for i, (part, shift) in enumerate(zip(parts, shifts, strict=True)):
        y = shift - part.shape[0] // 2 - top
        area = row[y : y + part.shape[0], x : x + part.shape[1]]
        np.maximum(area, part, out=area)
        x += part.shape[1] + (gaps[i] if i < len(gaps) else 0)
    return row, height


def _coords(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    w, h = scene.size
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _along(ys: np.ndarray, xs: np.ndarray, degrees: float) -> np.ndarray:
    """Each pixel's position along a direction (degrees from the x axis), in pixels."""
    t = math.radians(degrees)
    return xs * math.cos(t) + ys * math.sin(t)


def _light(scene: Scene, box: tuple[float, float, float, float]) -> np.ndarray:
    """Illumination (H, W) with 1.0 at its brightest."""
    ys, xs = _coords(scene)
    w, h = scene.size
    a = scene.light_args
    if scene.light in ("flat", "gradient", "shadow"):
        t = _along(ys, xs, a.get("direction", 0.0))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        low = a.get("low", 1.0) if scene.light != "shadow" else 0.9
        light = low + (1 - low) * t
        if scene.light == "shadow":
            left, top, right, bottom = box
            cy, cx = (top + bottom) / 2, (left + right) / 2
            normal = math.radians(a["direction"])
            edge = a["offset"] * (bottom - top)
            dist = (xs - cx) * math.cos(normal) + (ys - cy) * math.sin(normal) - edge
            soft = a["softness"] * min(w, h)
            light = light * (1 - a["depth"] / (1 + np.exp(np.clip(-dist / soft, -50, 50))))
        return light
    # vignette
    d = np.hypot((xs / w - a["cx"]), (ys / h - a["cy"]))
    d /= float(d.max())
    return 1 - a["strength"] * d ** a["power"]


def _lines(distance: np.ndarray, spacing: float, thickness: float) -> np.ndarray:
    """Coverage of parallel lines `spacing` apart, given each pixel's position across them."""
    off = np.abs(np.mod(distance, spacing) - spacing / 2)
    return np.clip(thickness / 2 + 0.5 - (spacing / 2 - off), 0, 1)


def _reflectance(
    scene: Scene,
    ink: np.ndarray,
    box: tuple[float, float, float, float],
    height: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """What the surface reflects (H, W, 3): paper or board, lines or table, and the ink."""
    w, h = scene.size
    paper = np.asarray(scene.paper, np.float32)
    grain = 1 + 0.03 * (_smooth_field(rng, (h, w), 2.0) - 0.5)
    surface = grain[..., None] * paper
    b = scene.background_args
    if scene.chalk:  # chalk dust wiped across the board
        dust = 0.08 * _smooth_field(rng, (h, w), min(w, h) / 6)
        surface = surface + dust[..., None]
    if scene.background in ("ruled", "squared"):
        ys, xs = _coords(scene)
        colour = np.asarray(RULE_COLOURS[int(b["colour"])], np.float32)
        thickness = max(1.0, 0.003 * min(w, h))
        spacing = b["spacing"] * height
        cover = _lines(_along(ys, xs, 90 + b["tilt"]) + rng.uniform(0, spacing), spacing, thickness)
        if scene.background == "squared":
            across = _along(ys, xs, b["tilt"]) + rng.uniform(0, spacing)
            cover = np.maximum(cover, _lines(across, spacing, thickness))
        cover *= 0.7
        if b.get("margin"):
            x0 = float(rng.uniform(0.05, 0.2)) * w
            margin = np.clip(1.5 - np.abs(_along(ys, xs, b["tilt"]) - x0), 0, 1)
            red = np.asarray((0.9, 0.4, 0.4), np.float32)
            surface = surface * (1 - margin[..., None]) + red * margin[..., None]
        surface = surface * (1 - cover[..., None]) + colour * cover[..., None]
    elif scene.background == "table":
        surface = _table(scene, surface, box, rng)
    colour = np.asarray(scene.ink, np.float32)
    return surface * (1 - ink[..., None]) + colour * ink[..., None]


def _table(
    scene: Scene,
    paper: np.ndarray,
    box: tuple[float, float, float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """The page on a table: the table shows beyond a tilted page edge on one or two sides."""
    ys, xs = _coords(scene)
    w, h = scene.size
    b = scene.background_args
    left, top, right, bottom = box
    corners = (np.array([left, right, left, right]), np.array([top, top, bottom, bottom]))
    tilt = math.tan(math.radians(b["tilt"]))

    def into_page(side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # Distance from a tilted line through the frame's border on `side` (left, top, ...).
        if side in (0, 2):
            return (x if side == 0 else w - x) - tilt * (y - h / 2)
        return (y if side == 1 else h - y) - tilt * (x - w / 2)

    on_paper = np.ones((h, w), np.float32)
    shade = np.zeros((h, w), np.float32)
    for side in range(4):
        if f"side{side}" not in b:
            continue
        across = w if side in (0, 2) else h
        # The page edge stays clear of the digit: a person frames the digit, not the table.
        depth = min(b[f"side{side}"] * across, float(into_page(side, *corners).min()) - 6)
        inside = into_page(side, xs, ys) - depth
        on_paper *= np.clip(inside + 0.5, 0, 1)
        shade = np.maximum(shade, np.clip(1 + inside / 4, 0, 1) * (inside < 0))
    kind = int(b["kind"])
    colour = np.asarray(TABLES[kind], np.float32) * _u(rng, 0.8, 1.2)
    waves = _along(ys, xs, _u(rng, 0, 180)) / _u(rng, 2, 8) + 3 * _smooth_field(rng, (h, w), 40)
    stripes = 1 + (0.15 if kind == 0 else 0.03) * np.sin(waves)
    table = stripes[..., None] * colour * (1 - 0.5 * shade[..., None])
    return paper * on_paper[..., None] + table * (1 - on_paper[..., None])


def render(
    digits: Sequence[np.ndarray], scene: Scene, rng: np.random.Generator
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Draw the digits (MNIST 28x28 uint8 arrays, left to right) as `scene` says; return the
    picture and where the ink is (left, top, right, bottom as fractions of the frame)."""
    w, h = scene.size
    row, height = _row(digits, scene, rng)
    rh, rw = row.shape
    margin = 0.02 * min(w, h)
    x0 = round(_u(rng, margin, max(margin, w - rw - margin)))
    y0 = round(_u(rng, margin, max(margin, h - rh - margin)))
    ink = np.zeros((h, w), np.float32)
    ink[y0 : y0 + rh, x0 : x0 + rw] = row[: h - y0, : w - x0]
    box = (float(x0), float(y0), float(x0 + rw), float(y0 + rh))
    where = (box[0] / w, box[1] / h, min(box[2], w) / w, min(box[3], h) / h)
    if scene.transparent:
        rgba = np.zeros((h, w, 4), np.uint8)
        colour = np.round(np.asarray(scene.ink) * 255).astype(np.uint8)
        # Paint programs store either the ink colour or black under fully transparent pixels.
        rgba[..., :3] = colour if rng.random() < 0.5 else colour * (ink[..., None] > 0)
        rgba[..., 3] = np.round(ink * 255).astype(np.uint8)
        return Image.fromarray(rgba, "RGBA"), where
    image = _reflectance(scene, ink, box, height, rng) * _light(scene, box)[..., None]
    white_balance = rng.uniform(0.95, 1.05, 3).astype(np.float32)
    image = image * (_u(rng, 0.95, 1.1) * white_balance)
    if scene.blur > 0:
        image = ndimage.gaussian_filter(image, (scene.blur, scene.blur, 0))
    if scene.noise > 0:  # shot noise grows with the signal; part of it is shared by channels
        grey = rng.standard_normal((h, w, 1), dtype=np.float32)
        colour_noise = rng.standard_normal((h, w, 3), dtype=np.float32)
        image = image + scene.noise * np.sqrt(image / 0.5 + 0.05) * (
            0.8 * grey + 0.6 * colour_noise
        )
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), where


def encode(image: Image.Image, scene: Scene) -> tuple[bytes, str]:
    """The file a camera or program would write: enlarged, rotated under an EXIF tag, encoded."""
    if scene.upscale > 1:
        size = (image.width * scene.upscale, image.height * scene.upscale)
        image = image.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if scene.orientation != 1:
        image = image.transpose(STORE_ROTATED[scene.orientation])
    if scene.jpeg is None:
        image.save(buffer, "PNG", compress_level=1)
        return buffer.getvalue(), ".png"
    exif = Image.Exif()
    if scene.orientation != 1:
        exif[0x0112] = scene.orientation
    image.save(buffer, "JPEG", quality=scene.jpeg, exif=exif.tobytes())
    return buffer.getvalue(), ".jpg"


def _crop(
    image: Image.Image,
    box: tuple[float, float, float, float],
    margins: tuple[float, float, float, float],
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The picture cut to the ink's box and `margins` (of its longer side) on each side."""
    left, top, right, bottom = np.multiply(box, [image.width, image.height] * 2)
    pad = np.multiply(margins, max(right - left, bottom - top))
    x0, y0 = max(0, math.floor(left - pad[0])), max(0, math.floor(top - pad[1]))
    x1 = min(image.width, math.ceil(right + pad[2]))
    y1 = min(image.height, math.ceil(bottom + pad[3]))
    w, h = x1 - x0, y1 - y0
    inside = np.clip([(left - x0) / w, (top - y0) / h, (right - x0) / w, (bottom - y0) / h], 0, 1)
    return image.crop((x0, y0, x1, y1)), (inside[0], inside[1], inside[2], inside[3])


def _resize(image: Image.Image, scene: Scene) -> Image.Image:
    """The picture shrunk to `scene.low_side` (averaged), then resized to `scene.side`."""
    for side, resample in ((scene.low_side, "box"), (scene.side, scene.resample)):
        if side:
            scale = side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling[resample.upper()])
    return image


def make_photo(
    digits: Sequence[np.ndarray],
    labels: Sequence[int],
    condition: str,
    rng: np.random.Generator,
    touch: bool = False,
) -> Photo:
    """One photo of the digits (left to right) under a condition from CONDITIONS."""
    if condition not in RECIPES:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    scene = replace(RECIPES[condition](base_scene(rng), rng), touch=touch)
    image, box = render(digits, scene, rng)
    if scene.crop is not None:
        image, box = _crop(image, box, scene.crop)
    image = _resize(image, scene)
    data, suffix = encode(image, scene)
    return Photo(data, suffix, "".join(str(int(v)) for v in labels), condition, box)


def photo_set(
    images: np.ndarray,
    labels: np.ndarray,
    condition: str,
    count: int,
    seed: int = 0,
    digits: int = 1,
    conditions: Sequence[str] | None = None,
    touch: bool = False,
) -> Iterator[Photo]:
    """`count` seeded photos of `digits`-digit numbers drawn from `images` without repeats.

    With `conditions`, each photo takes one of them at random and `condition` only names the
    set. With `touch`, two neighbouring digits of each number touch.
    """
    rng = np.random.default_rng([seed, zlib.crc32(condition.encode()), digits, touch])
    picks = rng.choice(len(images), size=count * digits, replace=False).reshape(count, digits)
    for index in picks:
        name = condition if conditions is None else str(rng.choice(list(conditions)))
        photo = make_photo(list(images[index]), list(labels[index]), name, rng, touch)
        yield replace(photo, condition=condition, sources=tuple(int(i) for i in index))
