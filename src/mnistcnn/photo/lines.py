"""Remove ruled or squared paper lines and page edges: thin lines across the frame.

Found by a Hough vote of the ink mask near horizontal and vertical; strokes crossing them stay.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def remove_lines(mask: np.ndarray) -> np.ndarray:
    """The mask without lines across the frame (a digit on a margin line keeps its stroke)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    if len(ys) > 40_000:  # a vote of a fixed sample is as good and bounded in time
        pick = np.random.default_rng(0).choice(len(ys), 40_000, replace=False)
        ys, xs = ys[pick], xs[pick]
    weight = mask.sum() / len(ys)  # pixels per vote
    thick = max(3, round(0.015 * min(mask.shape)))
    out = mask.copy()
    erased: list[tuple[bool, float, bool]] = []  # vertical, position, stops short of both ends
    for vertical in (False, True):
        # Lines run along the grid's rows: the mask's, or for vertical lines its transpose's.
        grid = mask.T if vertical else mask
        along, across = (ys, xs) if vertical else (xs, ys)
        span = grid.shape[1]
        # Every half degree, then the best one to a tenth: off by a quarter of a degree, a
        # line's votes spread over 2-3 bins and a thin one falls under the threshold.
        votes = {float(d): _vote(along, across, d) for d in np.arange(-10, 10.5, 0.5)}
        coarse = max(votes, key=lambda d: votes[d][0].max())
        fine = coarse + np.array([-4, -3, -2, -1, 1, 2, 3, 4]) / 10
        votes.update({float(d): _vote(along, across, d) for d in fine})
        degrees = max(votes, key=lambda d: votes[d][0].max())
        counts, offset = votes[degrees][0] * weight, votes[degrees][1]
        t = math.radians(degrees)
        rho_all = _rho(along, across, t)
        for line in np.flatnonzero(counts >= 0.6 * span):
            if counts[line] < counts[max(0, line - 2) : line + 3].max():
                continue  # the same line, off its centre
            rho = line + offset
            reach = along[np.abs(rho_all - rho) <= 1.5]
            if reach.min() > 0.15 * span or reach.max() < 0.85 * span:
                continue
            band = _line_band(grid, rho, t, thick)
            if band is None:
                continue
            kept = _erase_line(out.T if vertical else out, grid, rho, t, band)
            out = kept.T if vertical else kept
            short = min(reach.min(), span - 1 - reach.max()) > 0.01 * span
            erased.append((vertical, rho, short))
    # A lone line that stops short of both ends of the frame, with next to nothing else on the
    # page, is a stroke: a 1 down the page in a fine pen.
    positions = [position for _, position, _ in erased]
    lone = len({vertical for vertical, _, _ in erased}) == 1 and np.ptp(positions) <= thick
    if lone and all(short for _, _, short in erased) and out.sum() < 0.05 * mask.sum():
        return mask
    return out


def _rho(along: np.ndarray, across: np.ndarray, t: float) -> np.ndarray:
    """Each pixel's position across lines at angle `t` (radians) from the axis `along` runs on."""
    return across * math.cos(t) - along * math.sin(t)


def _vote(along: np.ndarray, across: np.ndarray, degrees: float) -> tuple[np.ndarray, int]:
    """Votes per line position (rho, 1 px bins) at an angle, and the first bin's rho."""
    rho = np.round(_rho(along, across, math.radians(degrees))).astype(np.int64)
    offset = int(rho.min())
    return np.bincount(rho - offset), offset


def _line_band(grid: np.ndarray, rho: float, t: float, thick: int) -> tuple[int, int] | None:
    """The offsets across a line along `grid`'s rows its ink covers; None if it is not thin."""
    # Thin: where its centre is ink, the median ink within `thick` of it is at most `thick`. The
    # band holds each offset inked in 7 of the line's 10 tenths: a page edge's wide rim lies off
    # its 1 px vote's centre, a stroke along the line covers fewer tenths.
    breadth, span = grid.shape
    along = np.arange(span)
    centre = (rho + along * math.sin(t)) / math.cos(t)
    offsets = np.arange(-thick, thick + 1)
    across = np.round(centre[:, None]).astype(np.int64) + offsets
    # Past the frame's edge the ink goes on as at the edge: a stroke along it is not thin.
    values = grid[np.clip(across, 0, breadth - 1), along[:, None]]
    on = values[:, thick]
    if not on.any() or float(np.median(values[on].sum(1))) > thick:
        return None
    tenths = np.stack([part.mean(0) >= 0.1 for part in np.array_split(values, 10)])
    covered = offsets[tenths.sum(0) >= 7]
    return min(-2, int(covered.min(initial=0))), max(2, int(covered.max(initial=0)))


def _erase_line(
    out: np.ndarray, grid: np.ndarray, rho: float, t: float, band: tuple[int, int]
) -> np.ndarray:
    """Clear a line's band (offsets across it from `rho`), keeping the strokes that cross it."""
    across, along = np.indices(grid.shape)
    offset = _rho(along, across, t) - rho
    lo, hi = band
    inside = (offset >= lo - 0.5) & (offset <= hi + 0.5)
    cleared = out & ~inside
    # A closing across the band bridges it where a stroke reaches it from both sides.
    reach = np.ones((hi - lo + 5, 1), bool)
    return cleared | (ndimage.binary_closing(cleared, reach) & inside & grid)
