"""Image files in -> digit labels and probabilities out (or, with `multi`, whole numbers).

Directories are expanded to the images inside them and processed in streamed chunks, so memory
stays bounded; a file that cannot be read becomes an error entry and the rest go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mnistcnn.calibrate import probabilities
from mnistcnn.errors import ImageError
from mnistcnn.model import DigitNet
from mnistcnn.photo import Preprocessed, Row, segment
from mnistcnn.predict import tta
from mnistcnn.predict.files import (
    MIN_CONFIDENCE,
    Prediction,
    Views,
    expand_inputs,
    predict_files,
)


@dataclass(frozen=True)
class NumberPrediction:
    """One file of digits in a row: the number read left to right, each digit's top k."""

    path: str
    number: str | None = None
    probability: float | None = None  # the model's chance that every digit is right
    digits: list[list[tuple[int, float]]] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # in the working image
    error: str | None = None
    low_confidence: bool = False  # `probability` below the asked minimum


@torch.inference_mode()
def view_logits(model: DigitNet, images: np.ndarray, use_tta: bool = False) -> torch.Tensor:
    """Raw logits (V, N, 10) of 28x28 images in [0, 1], (N, 28, 28): V = 1, or the TTA views."""
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.asarray(images, dtype=np.float32)).to(device).unsqueeze(1)
    if use_tta:
        return tta.view_logits(model, batch).cpu()
    return model.eval()(batch).float()[None].cpu()


def classify(model: DigitNet, images: np.ndarray, use_tta: bool = False) -> torch.Tensor:
    """Calibrated probabilities (N, 10) for 28x28 images in [0, 1], shaped (N, 28, 28)."""
    return probabilities(view_logits(model, images, use_tta), model.meta, use_tta)


def predict_paths(
    model: DigitNet,
    paths: Iterable[str | Path],
    *,
    top_k: int = 1,
    chunk: int = 256,
    save_dir: str | Path | None = None,
    min_confidence: float = MIN_CONFIDENCE,
    use_tta: bool = False,
) -> Iterator[Prediction]:
    """Predict every image, `chunk` files at a time, in input order (see `answers`)."""
    return predict_files(
        lambda images: classify(model, images, use_tta).numpy(),
        paths,
        top_k=top_k,
        chunk=chunk,
        save_dir=save_dir,
        min_confidence=min_confidence,
    )


# Log-probability a reading pays for each cut of a group of ink (touching digits) and for
# each join of two groups (one digit broken in two): a cut or a join must make the model
# clearly surer, not just give shapes it can name.
CUT_COST = 0.1
JOIN_COST = 0.5
# A piece of ink also pays this much per unit its logits' log-sum-exp falls short of the row's
# most digit-like group: a confident softmax over a shape unlike any digit (half an 8, a 6's
# stem) is not evidence. And WIDE_COST per row height its box is wider than the row is tall:
# one digit rarely is (MNIST's are at most 1.1 times as wide as tall for 95 %, 1.25 for 99 %),
# two touching digits read whole usually are. Set with the costs above on generated rows
# (benchmarks/photos.py seeds 10-14, not the reported ones).
ENERGY_WEIGHT = 0.5
WIDE_COST = 5.0


def _scores(logits: torch.Tensor, row: Row, candidates: list[Preprocessed]) -> list[float]:
    """Each candidate's score: its top log-probability, less ENERGY_WEIGHT times its energy
    shortfall against the best whole group's and WIDE_COST times its width beyond the row's
    height (`logits` (N, 10): one row per candidate, in order)."""
    score = logits.log_softmax(1).max(1).values
    energy = logits.logsumexp(1)
    whole = {id(o[0][0]) for o in row.readings if len(o[0]) == 1}
    reference = [i for i, d in enumerate(candidates) if id(d) in whole]
    if reference:
        score = score + ENERGY_WEIGHT * (energy - energy[reference].max()).clamp(max=0)
    if row.height:
        widths = torch.tensor([d.box[2] - d.box[0] for d in candidates], dtype=score.dtype)
        score = score - WIDE_COST * (widths / row.height - 1).clamp(min=0)
    return score.tolist()


def _read(
    model: DigitNet, path: Path, row: Row, top_k: int, use_tta: bool = False
) -> tuple[NumberPrediction, list[Preprocessed]]:
    """Pick the likeliest reading of the row (groups whole, cut where digits touch, or joined
    where one digit is broken in two) and read it: a best path over the groups."""
    candidates = [d for options in row.readings for option in options for d in option]
    candidates += [d for d in row.joined if d is not None]
    logits = view_logits(model, np.stack([d.image for d in candidates]), use_tta)
    # The reading is chosen on the raw logits (with TTA their mean over the views), the scale
    # the costs above were set on; the digits' reported probabilities are the calibrated ones.
    index = {id(d): i for i, d in enumerate(candidates)}
    score = _scores(logits.mean(0), row, candidates)
    probs = probabilities(logits, model.meta, use_tta)
    # best[i]: the best reading of the first i groups, as (score, candidate indices).
    best: list[tuple[float, list[int]]] = [(0.0, [])]
    for i, options in enumerate(row.readings):
        ways = [[index[id(d)] for d in option] for option in options]
        paths = [
            (best[i][0] + sum(score[j] for j in way) - CUT_COST * (len(way) - 1), best[i][1] + way)
            for way in ways
        ]
        joined = row.joined[i - 1] if i > 0 and len(row.joined) >= i else None
        if joined is not None:
            j = index[id(joined)]
            paths.append((best[i - 1][0] + score[j] - JOIN_COST, [*best[i - 1][1], j]))
        best.append(max(paths, key=lambda path: path[0]))
    chosen = best[-1][1]
    values, labels = probs[chosen].topk(min(top_k, probs.shape[1]), dim=1)
    tops = [
        list(zip(labs, vals, strict=True))
        for labs, vals in zip(labels.tolist(), values.tolist(), strict=True)
    ]
    number = "".join(str(top[0][0]) for top in tops)
    probability = float(np.prod([top[0][1] for top in tops]))
    digits = [candidates[i] for i in chosen]
    read = NumberPrediction(str(path), number, probability, tops, [d.box for d in digits])
    return read, digits


def read_number(
    model: DigitNet,
    path: str | Path,
    *,
    top_k: int = 1,
    use_tta: bool = False,
    row: Row | None = None,
) -> NumberPrediction:
    """Read the digits in a row in one image, left to right (ImageError if there are none);
    `row`: the image's `segment`ation, if it is already at hand."""
    row = segment(path) if row is None else row
    return _read(model, Path(path), row, top_k, use_tta)[0]


def predict_numbers(
    model: DigitNet,
    paths: Iterable[str | Path],
    *,
    top_k: int = 1,
    save_dir: str | Path | None = None,
    min_confidence: float = MIN_CONFIDENCE,
    use_tta: bool = False,
) -> Iterator[NumberPrediction]:
    """Read every image as a row of digits (a year, a phone number), in input order; a number
    whose probability (every digit right) is under `min_confidence` is flagged."""
    views = Views(save_dir) if save_dir is not None else None
    for path in expand_inputs(paths):
        try:
            row = segment(path, steps=views is not None)
        except ImageError as exc:
            yield NumberPrediction(str(path), error=str(exc))
            continue
        read, digits = _read(model, path, row, top_k, use_tta)
        if views is not None and row.steps is not None:
            crops = [d.crop for d in digits if d.crop is not None]
            steps = replace(
                row.steps, boxes=read.boxes, crops=crops, images=[d.image for d in digits]
            )
            views.save(path, [d.image for d in digits], steps)
        yield replace(read, low_confidence=read.probability < min_confidence)
