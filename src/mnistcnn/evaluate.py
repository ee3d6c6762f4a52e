"""`mnistcnn eval`: test-set accuracy, per-class metrics and calibration of one model, or of an
ensemble (several models' calibrated probabilities averaged)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mnistcnn.calibrate import evaluate_calibration, expected_calibration_error
from mnistcnn.checkpoint import load_model
from mnistcnn.data import default_cache_dir, load_mnist
from mnistcnn.metrics import classification_report
from mnistcnn.model.summary import fuse
from mnistcnn.predict.classify import (
    Ensemble,
    images_view_logits,
    probabilities,
    stored_temperatures,
)
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
    logits = [
        predict_logits(m, test, batch_size, device, amp=amp, channels_last=True) for m in models
    ]
    if len(models) == 1:
        report = classification_report(logits[0], test.labels)
        report["stored_accuracy"] = models[0].meta.get("test_accuracy")
        how = {"download": download, "batch_size": batch_size, "use_tta": use_tta}
        report["calibration"] = evaluate_calibration(
            models[0], paths[0], test, logits[0], data_dir, **how
        )
        return report
    ensemble = Ensemble(models)
    started = time.perf_counter()
    if use_tta:
        views = images_view_logits(ensemble, test.images, batch_size)
    else:
        views = predict_logits(ensemble, test, batch_size, device, amp=amp, channels_last=True)
        views = views[None]
    mean = probabilities(views, ensemble.meta, use_tta)
    seconds = time.perf_counter() - started
    labels = test.labels.cpu()
    report = classification_report(mean.log(), labels)
    report["ensemble"] = {
        "members": [
            {
                "model": str(path),
                "accuracy": (plain.argmax(1).cpu() == labels).double().mean().item(),
                "calibrated": stored_temperatures(m.meta) is not None,
            }
            for path, plain, m in zip(paths, logits, models, strict=True)
        ],
        "tta": use_tta,
        "ece": expected_calibration_error(mean, labels),
        "seconds": round(seconds, 3),
    }
    return report


def format_ensemble(ensemble: dict[str, Any], accuracy: float) -> list[str]:
    """The ensemble section of the eval report as text lines."""
    members = ensemble["members"]
    best = max(m["accuracy"] for m in members)
    lines = [
        f"ensemble of {len(members)} models (calibrated probabilities averaged"
        f"{', each over its TTA views' if ensemble['tta'] else ''}): "
        f"{100 * accuracy:.2f} %, {100 * (accuracy - best):+.2f} points on its best member",
        *(f"  {100 * m['accuracy']:.2f} %  {m['model']}" for m in members),
        f"  ECE {100 * ensemble['ece']:.2f} %; {ensemble['seconds']:.2f} s for the test set",
    ]
    raw = [m["model"] for m in members if not m["calibrated"]]
    if raw:
        lines.append(f"  no stored temperature (raw softmax): {', '.join(raw)}")
    return lines
