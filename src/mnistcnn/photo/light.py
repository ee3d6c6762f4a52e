"""Flatten the light: ink contrast per pixel, 0 on paper whatever the gradients and shadows.

The paper's brightness is a grey closing (dark ink) or opening (chalk) over a window wider than
any stroke: it keeps gradients, vignettes and a shadow's edge; ink is measured against it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

Filter = Callable[..., np.ndarray]

# How much more light-side than dark-side evidence calls the ink light (see `dark_ink`).
LIGHT_INK_ODDS = 10.0
# The paper's brightness is estimated over windows this fraction of the shorter side: wider
# than any pen or marker stroke, so strokes vanish from the estimate while light does not.
BACKGROUND_WINDOW = 0.5
# The paper's estimate reaches this many pixels (at half size) past a closing (see `_background`).
SPILL = 1


def dark_ink(luminance: np.ndarray) -> bool:
    """Whether the ink is darker than its background (pen on paper) or lighter (chalk)."""
    # Ink is a minority: darker than three quarters of its surroundings (9x9 and 17x17 blocks of
    # 16 px, the larger for a marker), chalk lighter. In the generated photos chalk's light
    # outweighs dark 150 times or more, a page that is a bright minority of the frame ~4 times.
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
    """Grey closing (max, then min filter) or opening of one channel, the second SPILL px wider."""
    # Padded a window deep, light fading towards a border (a vignette) is light, not a stroke.
    padded = np.pad(channel, window, mode="edge")
    # Pooled and enlarged, a closing runs past a sharp step of light (a shadow's edge) into its
    # darker side, seen as a line of ink: the wider second filter puts it back.
    closed = second(first(padded, size=window), size=window + 2 * SPILL)
    return closed[window:-window, window:-window]


def flatten(rgb: np.ndarray) -> np.ndarray:
    """Ink contrast per pixel with the light flattened: 0 on paper, ~0.85 on a black pen stroke."""
    height, width = rgb.shape[:2]
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luminance = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), np.float32) / 255
    dark = dark_ink(luminance)
    # The darkest channel carries a pen's contrast whatever its colour, the brightest a chalk's.
    # Each is weighed by the paper's level in it (tinted paper), or a red pen on blue paper has
    # the paper's weak red beside its own weak green; a colour the paper hardly reflects is out.
    if dark:
        paper = np.maximum(np.median(rgb[::4, ::4].reshape(-1, 3), axis=0), 1.0)
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
    filters = (ndimage.maximum_filter, ndimage.minimum_filter)
    small = _background(half, window, *(filters if dark else filters[::-1]))
    back = np.asarray(
        Image.fromarray(np.ascontiguousarray(small), "F").resize(
            (width, height), Image.Resampling.BILINEAR
        )
    )
    if dark:
        return (back - smooth) / np.maximum(back, 0.02)
    return smooth - back
