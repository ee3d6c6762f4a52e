"""Temperature scaling at run time: the temperatures a model file carries and the calibrated
probabilities `predict`, `serve` and `explain` report (fitting them is `calibrate`'s job)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def stored_temperatures(meta: dict[str, Any]) -> dict[str, float] | None:
    """The temperatures a model file carries, or None (trained before calibration existed)."""
    values = {key: meta.get(key) for key in ("temperature", "tta_temperature")}
    if all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values.values()):
        return {key: float(v) for key, v in values.items()}  # type: ignore[arg-type]
    return None


def calibrated_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T)."""
    return F.softmax(logits / temperature, dim=-1)


def probabilities(view_logits: torch.Tensor, meta: dict[str, Any], use_tta: bool) -> torch.Tensor:
    """Calibrated probabilities (N, 10) of logits (V, N, 10): the plain view's, or with TTA the
    views' mean's; a model without stored temperatures gets T = 1 (its raw softmax)."""
    temps = stored_temperatures(meta) or {"temperature": 1.0, "tta_temperature": 1.0}
    if use_tta:
        return calibrated_probs(view_logits.float().mean(0), temps["tta_temperature"])
    return calibrated_probs(view_logits[0].float(), temps["temperature"])
