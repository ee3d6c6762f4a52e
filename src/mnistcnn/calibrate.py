"""Honest confidence: temperature scaling fitted on validation logits, and calibration error.

A network's softmax is rarely calibrated: trained with label smoothing, ours claims less than it
knows (test ECE 12-18 %). Dividing the logits by one scalar T, fitted on held-out data, fixes
most of that without changing any prediction (Guo et al., 2017). Data loading (torchvision) is
imported only to calibrate an old model file, so `predict` and `serve` stay light.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mnistcnn.predict import tta

if TYPE_CHECKING:  # data.py imports torchvision: only for the annotation
    from mnistcnn.data import Split

# The standard reliability-diagram resolution (Guo et al.): 15 equal-width confidence bins.
ECE_BINS = 15
# log T is searched in [1/20, 20]: a network off by more than that is broken, not miscalibrated.
LOG_T_RANGE = (math.log(0.05), math.log(20.0))
# Golden-section steps: each keeps 0.618 of the interval, 80 narrow 6 (log-units) to 1e-16.
SEARCH_STEPS = 80
# Validation images whose TTA views fit `tta_temperature`: enough for one scalar.
TTA_IMAGES = 1000


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """Sum over confidence bins B of |B|/n * |accuracy(B) - mean confidence(B)|.

    The bins are equal-width, (i/bins, (i+1)/bins]; the confidence is the top probability.
    """
    probs, labels = probs.double().cpu(), labels.cpu()
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    index = ((confidence * bins).ceil().long() - 1).clamp(0, bins - 1)
    gap = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence - correct)
    # |sum(conf - correct)| over a bin is |B| * |mean conf - accuracy|; divided by n: ECE.
    return gap.abs().sum().item() / max(len(labels), 1)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `logits / temperature`."""
    return F.cross_entropy(logits.double().cpu() / temperature, labels.cpu()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimizes the NLL of `logits / T` (deterministic golden-section search).

    The NLL is convex in 1/T, hence unimodal in log T, so a bracketing search finds the optimum.
    """
    logits, labels = logits.double().cpu(), labels.cpu()

    def loss(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), labels).item()

    lo, hi = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(SEARCH_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def calibration(
    logits: torch.Tensor,
    labels: torch.Tensor,
    view_logits: torch.Tensor,
    view_labels: torch.Tensor,
) -> dict[str, float]:
    """Fit T on validation logits (N, 10), and a second T for the averaged logits (V, M, 10) of
    the TTA views of M validation images; with the validation ECE before and after, for `meta`."""
    temperature = fit_temperature(logits, labels)
    return {
        "temperature": temperature,
        "tta_temperature": fit_temperature(view_logits.mean(0), view_labels),
        "val_ece": expected_calibration_error(calibrated_probs(logits, 1.0), labels),
        "val_ece_calibrated": expected_calibration_error(
            calibrated_probs(logits, temperature), labels
        ),
    }


def calibrate_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """`calibration` of `model` on validation images (N, 28, 28) uint8; TTA's temperature on the
    first TTA_IMAGES of them (every view of all would cost a short training run a third more)."""
    plain = tta.images_view_logits(model, images, batch_size, views=1)[0]
    few = slice(0, TTA_IMAGES)
    views = tta.images_view_logits(model, images[few], batch_size)
    return calibration(plain, labels, views, labels[few])


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
    """Calibrated probabilities (N, 10): the plain view's, or with TTA the averaged logits'.

    A model without stored temperatures gets T = 1 (its raw softmax, uncalibrated).
    """
    temps = stored_temperatures(meta) or {"temperature": 1.0, "tta_temperature": 1.0}
    if use_tta:
        return calibrated_probs(view_logits.float().mean(0), temps["tta_temperature"])
    return calibrated_probs(view_logits[0].float(), temps["temperature"])


def fit_on_validation(
    model: nn.Module,
    model_path: str | Path,
    data_dir: str | Path,
    *,
    download: bool,
    batch_size: int,
) -> tuple[dict[str, float], str]:
    """`calibration` of a saved model on the validation split rebuilt now; which split it was.

    The split comes from `data.val_size` / `data.split_seed` in the `.yaml` written beside the
    model, else from the defaults: a model trained on another split would have T fitted on
    some of its own training images (too confident), which the description says.
    """
    from mnistcnn.config import DataConfig
    from mnistcnn.data import default_cache_dir, load_mnist, split_train_val

    sidecar = Path(model_path).with_suffix(".yaml")
    data: dict[str, Any] = {}
    if sidecar.is_file():
        with contextlib.suppress(yaml.YAMLError, OSError):
            loaded = yaml.safe_load(sidecar.read_text())
            if isinstance(loaded, dict) and isinstance(loaded.get("data"), dict):
                data = loaded["data"]
    defaults = DataConfig()
    split = DataConfig(
        val_size=int(data.get("val_size", defaults.val_size)),
        split_seed=int(data.get("split_seed", defaults.split_seed)),
    )
    train = load_mnist(data_dir, train=True, download=download, cache=default_cache_dir())
    val = split_train_val(train, split)[1]
    where = f"as in {sidecar.name}" if data else f"defaults: no {sidecar.name} beside the model"
    return calibrate_model(model, val.images, val.labels, batch_size), (
        f"the validation split: {split.val_size} images, split_seed {split.split_seed}, {where}"
    )


def model_temperatures(
    model: nn.Module, model_path: str | Path, data_dir: str | Path, **kwargs: Any
) -> tuple[dict[str, float], str]:
    """The model's stored temperatures, or (older files) ones fitted now as `fit_on_validation`
    does; and where they come from."""
    stored = stored_temperatures(getattr(model, "meta", {}))
    if stored is not None:
        return stored, "stored in the model, fitted on its validation split"
    fitted, split = fit_on_validation(model, model_path, data_dir, **kwargs)
    return {k: fitted[k] for k in ("temperature", "tta_temperature")}, (
        f"not stored in the model: fitted now on {split}; `mnistcnn calibrate` stores it"
    )


def calibration_report(
    view_logits: torch.Tensor, labels: torch.Tensor, temps: dict[str, float], source: str
) -> dict[str, Any]:
    """ECE (15 bins) and NLL before and after temperature scaling of test logits (V, N, 10);
    with more than one view also accuracy and calibrated ECE with TTA."""
    logits, labels = view_logits[0].double(), labels.cpu()
    report: dict[str, Any] = {
        **temps,
        "temperature_source": source,
        "bins": ECE_BINS,
        "ece": expected_calibration_error(calibrated_probs(logits, 1.0), labels),
        "ece_calibrated": expected_calibration_error(
            calibrated_probs(logits, temps["temperature"]), labels
        ),
        "nll": nll(logits, labels),
        "nll_calibrated": nll(logits, labels, temps["temperature"]),
    }
    if len(view_logits) > 1:
        probs = calibrated_probs(view_logits.double().mean(0), temps["tta_temperature"])
        report["tta"] = {
            "views": len(view_logits),
            "accuracy": (probs.argmax(1) == labels).double().mean().item(),
            "accuracy_without": (logits.argmax(1) == labels).double().mean().item(),
            "ece_calibrated": expected_calibration_error(probs, labels),
        }
    return report


def evaluate_calibration(
    model: nn.Module,
    model_path: str | Path,
    test: Split,
    logits: torch.Tensor,
    data_dir: str | Path,
    *,
    download: bool,
    batch_size: int,
    use_tta: bool = False,
) -> dict[str, Any]:
    """`calibration_report` of a saved model on the test split (a `data.Split`) and its logits;
    with `use_tta` the test views' logits are computed too."""
    temps, source = model_temperatures(
        model, model_path, data_dir, download=download, batch_size=batch_size
    )
    views = logits[None]  # (1, N, 10): the plain input only
    if use_tta:
        views = tta.images_view_logits(model, test.images, batch_size)
    return calibration_report(views, test.labels, temps, source)


def format_calibration(cal: dict[str, Any]) -> list[str]:
    """The calibration report as text lines."""
    lines = [
        f"calibration ({cal['bins']}-bin expected calibration error, ECE)",
        f"  temperature: {cal['temperature']:.4f} ({cal['temperature_source']})",
        f"  ECE: {100 * cal['ece']:.2f} % before, {100 * cal['ece_calibrated']:.2f} % after "
        "temperature scaling",
        f"  NLL: {cal['nll']:.4f} before, {cal['nll_calibrated']:.4f} after",
    ]
    if "tta" in cal:
        t = cal["tta"]
        lines += [
            f"test-time augmentation ({t['views']} views, logits averaged, "
            f"temperature {cal['tta_temperature']:.4f})",
            f"  accuracy: {100 * t['accuracy']:.2f} % with, {100 * t['accuracy_without']:.2f} % "
            "without",
            f"  ECE: {100 * t['ece_calibrated']:.2f} % with, {100 * cal['ece_calibrated']:.2f} % "
            "without (both after temperature scaling)",
        ]
    return lines
