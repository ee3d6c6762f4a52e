"""`mnistcnn eval`: test-set accuracy, per-class metrics and calibration of one model, or of an
ensemble (several models' calibrated probabilities averaged)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mnistcnn.calibrate import (
    evaluate_calibration,
    expected_calibration_error,
    fit_on_validation,
)
from mnistcnn.checkpoint import load_model
from mnistcnn.data import default_cache_dir, load_mnist
from mnistcnn.metrics import accuracy, classification_report
from mnistcnn.model.summary import fuse
from mnistcnn.predict.classify import (
    Ensemble,
    images_view_logits,
    log_of,
    mean_probabilities,
    probabilities,
    stored_temperatures,
)
from mnistcnn.train.build import autocast
from mnistcnn.train.loops import predict_logits


def evaluate_models(
    paths: Sequence[str | Path],
    data_dir: str | Path,
    device: torch.device,
    *,
    download: bool = True,
    batch_size: int = 0,
    use_tta: bool = False,
    amp: bool = False,
) -> dict[str, Any]:
    """The `eval` report of one model file, or of the ensemble of several."""
    # BatchNorm folded into the convolutions: the same logits (within 1e-5), faster.
    models = [fuse(load_model(p, device)).to(memory_format=torch.channels_last) for p in paths]
    test = load_mnist(data_dir, train=False, download=download, cache=default_cache_dir())
    test = test.to(device)
    started = time.perf_counter()
    logits = [
        predict_logits(m, test, batch_size, device, amp=amp, channels_last=True) for m in models
    ]
    seconds = time.perf_counter() - started
    if len(models) == 1:
        report = classification_report(logits[0], test.labels)
        report["stored_accuracy"] = models[0].meta.get("test_accuracy")
        how = {"download": download, "batch_size": batch_size, "use_tta": use_tta}
        with autocast(device, amp):  # `--amp` covers the TTA views (and a temperature fit)
            report["calibration"] = evaluate_calibration(
                models[0], paths[0], test, logits[0], data_dir, **how
            )
        return report
    # As for one model: a member without a stored temperature gets one fitted now.
    temperatures, fitted = [], []
    for model, path in zip(models, paths, strict=True):
        stored = stored_temperatures(model.meta)
        if stored is None:
            stored = fit_on_validation(model, path, data_dir, download, batch_size)[0]
            fitted.append(str(path))
        temperatures.append(stored["temperature"])
    labels = test.labels.cpu()
    mean = mean_probabilities([x.cpu() for x in logits], temperatures)
    report = classification_report(log_of(mean), labels)
    report["ensemble"] = {
        "members": [
            {"model": str(path), "accuracy": accuracy(x, labels), "temperature": t}
            for path, x, t in zip(paths, logits, temperatures, strict=True)
        ],
        "fitted_now": fitted,
        "ece": expected_calibration_error(mean, labels),
        "seconds": round(seconds, 3),
    }
    if use_tta:  # as `predict --tta -m A -m B`: the ensemble's log-probabilities over the views
        ensemble = Ensemble(models, temperatures)
        with autocast(device, amp):
            views = images_view_logits(ensemble, test.images, batch_size)
        tta = probabilities(views, ensemble.meta, use_tta=True)
        report["ensemble"]["tta"] = {
            "views": len(views),
            "accuracy": accuracy(tta, labels),
            "ece": expected_calibration_error(tta, labels),
        }
    return report


def format_ensemble(ensemble: dict[str, Any], accuracy: float) -> list[str]:
    """The ensemble section of the eval report as text lines."""
    members = ensemble["members"]
    best = max(m["accuracy"] for m in members)
    lines = [
        f"ensemble of {len(members)} models (their calibrated probabilities averaged): "
        f"{100 * accuracy:.2f} %, {100 * (accuracy - best):+.2f} points on its best member",
        *(f"  {100 * m['accuracy']:.2f} %  {m['model']}" for m in members),
        f"  ECE {100 * ensemble['ece']:.2f} %; the members took {ensemble['seconds']:.2f} s "
        "for the test set",
    ]
    if "tta" in ensemble:
        tta = ensemble["tta"]
        lines.append(
            f"  with test-time augmentation ({tta['views']} views): "
            f"{100 * tta['accuracy']:.2f} %, ECE {100 * tta['ece']:.2f} %"
        )
    if ensemble["fitted_now"]:
        lines.append(
            "  no stored temperature, fitted now on the validation split (`mnistcnn calibrate` "
            f"stores it): {', '.join(ensemble['fitted_now'])}"
        )
    return lines
