"""A row of digits in one image (a year, a phone number) read left to right: its groups of ink
read whole, cut or joined, whichever reading the model finds likeliest (a best path)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mnistcnn.errors import ImageError
from mnistcnn.model.nets import DigitNet
from mnistcnn.photo.digit import Preprocessed
from mnistcnn.photo.row import Row, segment
from mnistcnn.predict.classify import digit_logits, probabilities
from mnistcnn.predict.files import MIN_CONFIDENCE, expand_inputs, save_views, unique_name

# Log-probability a reading pays per cut of a group and per join of two: it must make the model
# clearly surer. A piece also pays ENERGY_WEIGHT per unit its logits' log-sum-exp falls short of
# the row's most digit-like group (a sure softmax over half an 8 is no evidence), and WIDE_COST
# per row height its box is wider than tall (99 % of MNIST's digits are within 1.25; touching
# digits read whole are wider). Set on generated rows (benchmarks/photos.py seeds 10-14).
CUT_COST = 0.1
JOIN_COST = 0.5
ENERGY_WEIGHT = 0.5
WIDE_COST = 5.0


@dataclass(frozen=True)
class NumberAnswer:
    """One file of digits in a row: the number read left to right, each digit's top k."""

    path: str
    number: str | None = None
    probability: float | None = None  # the model's chance that every digit is right
    digits: list[list[tuple[int, float]]] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # in the working image
    error: str | None = None
    low_confidence: bool = False  # `probability` below the asked minimum


def _scores(logits: torch.Tensor, row: Row, candidates: list[Preprocessed]) -> list[float]:
    """Each candidate's top log-probability less its costs (`logits` (N, 10), one per candidate)."""
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


def _best_path(row: Row, index: dict[int, int], score: list[float]) -> list[int]:
    """The candidates (indices) of the likeliest reading of the row's groups, left to right."""
    # best[i]: the best reading of the first i groups, as (score, candidate indices).
    best: list[tuple[float, list[int]]] = [(0.0, [])]
    for i, options in enumerate(row.readings):
        paths = [
            (best[i][0] + sum(score[j] for j in way) - CUT_COST * (len(way) - 1), best[i][1] + way)
            for way in ([index[id(d)] for d in option] for option in options)
        ]
        joined = row.joined[i - 1] if i > 0 and len(row.joined) >= i else None
        if joined is not None:
            j = index[id(joined)]
            paths.append((best[i - 1][0] + score[j] - JOIN_COST, [*best[i - 1][1], j]))
        best.append(max(paths, key=lambda path: path[0]))
    return best[-1][1]


def _read(
    model: DigitNet, path: Path, row: Row, top_k: int, use_tta: bool = False
) -> tuple[NumberAnswer, list[Preprocessed]]:
    """The row's likeliest reading, and the digits it chose."""
    candidates = [d for options in row.readings for option in options for d in option]
    candidates += [d for d in row.joined if d is not None]
    logits = digit_logits(model, np.stack([d.image for d in candidates]), use_tta)
    # The reading is chosen on the raw logits (with TTA their mean over the views), the scale
    # the costs above were set on; the digits' reported probabilities are the calibrated ones.
    index = {id(d): i for i, d in enumerate(candidates)}
    chosen = _best_path(row, index, _scores(logits.mean(0), row, candidates))
    probs = probabilities(logits, model.meta, use_tta)
    values, labels = probs[chosen].topk(min(top_k, probs.shape[1]), dim=1)
    pairs = zip(labels.tolist(), values.tolist(), strict=True)
    tops = [list(zip(labs, vals, strict=True)) for labs, vals in pairs]
    probability = float(np.prod([top[0][1] for top in tops]))
    digits = [candidates[i] for i in chosen]
    number = "".join(str(top[0][0]) for top in tops)
    return NumberAnswer(str(path), number, probability, tops, [d.box for d in digits]), digits


def read_number(
    model: DigitNet, path: str | Path, top_k: int = 1, use_tta: bool = False, row: Row | None = None
) -> NumberAnswer:
    """The number in one image (ImageError if none); `row`: its `segment`ation, if at hand."""
    return _read(model, Path(path), segment(path) if row is None else row, top_k, use_tta)[0]


def predict_numbers(
    model: DigitNet,
    paths: Iterable[str | Path],
    *,
    top_k: int = 1,
    save_dir: str | Path | None = None,
    min_confidence: float = MIN_CONFIDENCE,
    use_tta: bool = False,
) -> Iterator[NumberAnswer]:
    """Read every image as a row of digits, in input order, flagging any under `min_confidence`."""
    taken: set[str] = set()  # the names of the views written
    for path in expand_inputs(paths):
        try:
            row = segment(path, steps=save_dir is not None)
        except ImageError as exc:
            yield NumberAnswer(str(path), error=str(exc))
            continue
        read, digits = _read(model, path, row, top_k, use_tta)
        if save_dir is not None:
            save_views(Path(save_dir), unique_name(path, taken), digits, row.steps)
        yield replace(read, low_confidence=read.probability < min_confidence)
