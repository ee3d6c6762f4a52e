"""Fitting honest confidence: one T dividing the logits, fitted on validation data, fixes most
miscalibration and changes no prediction (Guo et al., 2017); `predict.classify` applies it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mnistcnn.metrics import accuracy
from mnistcnn.predict.classify import images_view_logits, stored_temperatures

if TYPE_CHECKING:  # data.py imports torchvision: only for the annotation
    from mnistcnn.data import Split

# The standard reliability-diagram resolution (Guo et al.): 15 equal-width confidence bins.
ECE_BINS = 15
# log T is searched in [1/20, 20]: a network off by more than that is broken, not miscalibrated.
LOG_T_RANGE = (math.log(0.05), math.log(20.0))
# Validation images whose TTA views fit `tta_temperature`: enough for one scalar, and every view
# of all of them would cost a short training run a third more.
TTA_IMAGES = 1000


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over equal-width confidence bins (i/15, (i+1)/15] of |B|/n * |accuracy - conf|."""
    probs, labels = probs.double().cpu(), labels.cpu()
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    index = ((confidence * ECE_BINS).ceil().long() - 1).clamp(0, ECE_BINS - 1)
    gap = torch.zeros(ECE_BINS, dtype=torch.float64).index_add_(0, index, confidence - correct)
    # |sum(conf - correct)| over a bin is |B| * |mean conf - accuracy|; divided by n: ECE.
    return gap.abs().sum().item() / max(len(labels), 1)


def _ece(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return expected_calibration_error(F.softmax(logits / temperature, dim=-1), labels)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `logits / temperature`."""
    return F.cross_entropy(logits.double().cpu() / temperature, labels.cpu()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimizes the NLL of `logits / T`."""
    from scipy.optimize import minimize_scalar  # slow to import: only fitting needs it

    # The NLL is convex in 1/T, hence unimodal in log T: a bounded search finds the optimum.
    logits, labels = logits.double().cpu(), labels.cpu()
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=LOG_T_RANGE,
        method="bounded",
        options={"xatol": 1e-9},
    )
    return math.exp(found.x)


def calibrate_logits(
    logits: torch.Tensor, labels: torch.Tensor, view_logits: torch.Tensor, view_labels: torch.Tensor
) -> dict[str, float]:
    """T of validation logits (N, 10), T of the averaged TTA views' (V, M, 10), ECE before/after."""
    temperature = fit_temperature(logits, labels)
    return {
        "temperature": temperature,
        "tta_temperature": fit_temperature(view_logits.mean(0), view_labels),
        "val_ece": _ece(logits, labels),
        "val_ece_calibrated": _ece(logits, labels, temperature),
    }


def calibrate_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """`calibrate_logits` of `model` on validation images (N, 28, 28) uint8."""
    plain = images_view_logits(model, images, batch_size, count=1)[0]
    views = images_view_logits(model, images[:TTA_IMAGES], batch_size)
    return calibrate_logits(plain, labels, views, labels[:TTA_IMAGES])


def fit_on_validation(
    model: nn.Module, model_path: str | Path, data_dir: str | Path, download: bool, batch_size: int
) -> tuple[dict[str, float], str]:
    """`calibrate_model` on the validation split rebuilt now, and which split it was."""
    # The split as the `.yaml` written beside the model says, else the defaults: a model trained
    # on another split gets T fitted on some of its own training images, which the text says.
    from mnistcnn.config.schema import DataConfig
    from mnistcnn.data import default_cache_dir, load_mnist, split_train_val

    sidecar = Path(model_path).with_suffix(".yaml")
    try:
        data = yaml.safe_load(sidecar.read_text())["data"]
    except (yaml.YAMLError, OSError, TypeError, KeyError):  # no file, not a mapping, no `data`
        data = None
    data = data if isinstance(data, dict) else {}
    split = DataConfig(**{k: int(data[k]) for k in ("val_size", "split_seed") if k in data})
    train = load_mnist(data_dir, train=True, download=download, cache=default_cache_dir())
    val = split_train_val(train, split)[1]
    where = f"as in {sidecar.name}" if data else f"defaults: no {sidecar.name} beside the model"
    return calibrate_model(model, val.images, val.labels, batch_size), (
        f"the validation split: {split.val_size} images, split_seed {split.split_seed}, {where}"
    )


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
    """ECE and NLL of test `logits` before and after temperature scaling, TTA's accuracy and ECE."""
    # A model without stored temperatures gets them fitted now, as `calibrate` would.
    temps = stored_temperatures(getattr(model, "meta", {}))
    source = "stored in the model, fitted on its validation split"
    if temps is None:
        fitted, split = fit_on_validation(model, model_path, data_dir, download, batch_size)
        temps = {k: fitted[k] for k in ("temperature", "tta_temperature")}
        source = f"not stored in the model: fitted now on {split}; `mnistcnn calibrate` stores it"
    # (V, N, 10): with TTA every view of the test images, else the plain input only.
    views = images_view_logits(model, test.images, batch_size) if use_tta else logits[None]
    logits, labels, t = views[0].double(), test.labels.cpu(), temps["temperature"]
    report: dict[str, Any] = {
        **temps,
        "temperature_source": source,
        "bins": ECE_BINS,
        "ece": _ece(logits, labels),
        "ece_calibrated": _ece(logits, labels, t),
        "nll": nll(logits, labels),
        "nll_calibrated": nll(logits, labels, t),
    }
    if use_tta:
        probs = F.softmax(views.double().mean(0) / temps["tta_temperature"], dim=-1)
        report["tta"] = {
            "views": len(views),
            "accuracy": accuracy(probs, labels),
            "accuracy_without": accuracy(logits, labels),
            "ece_calibrated": expected_calibration_error(probs, labels),
        }
    return report


def format_calibration(cal: dict[str, Any]) -> list[str]:
    """The calibration report as text lines."""
    pct = {k: f"{100 * v:.2f} %" for k, v in cal.items() if "ece" in k}
    lines = [
        f"calibration ({cal['bins']}-bin expected calibration error, ECE)",
        f"  temperature: {cal['temperature']:.4f} ({cal['temperature_source']})",
        f"  ECE: {pct['ece']} before, {pct['ece_calibrated']} after temperature scaling",
        f"  NLL: {cal['nll']:.4f} before, {cal['nll_calibrated']:.4f} after",
    ]
    if "tta" in cal:
        t = {k: f"{100 * v:.2f} %" for k, v in cal["tta"].items() if k != "views"}
        lines += [
            f"test-time augmentation ({cal['tta']['views']} views, logits averaged, "
            f"temperature {cal['tta_temperature']:.4f})",
            f"  accuracy: {t['accuracy']} with, {t['accuracy_without']} without",
            f"  ECE: {t['ece_calibrated']} with, {pct['ece_calibrated']} without (both after "
            "temperature scaling)",
        ]
    return lines
