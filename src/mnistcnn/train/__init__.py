"""Training: build (device, starting weights, loss, optimizer, schedule), loops (train/evaluate),
fitting (`fit`, the orchestrator: checkpoints, RNGs, resume) and distributed."""

from __future__ import annotations

from mnistcnn.train.build import (
    autocast,
    autocast_dtype,
    build_loss,
    build_optimizer,
    build_scheduler,
    resolve_device,
)
from mnistcnn.train.fitting import check_output, fit, output_paths
from mnistcnn.train.loops import evaluate, predict_logits, scores, train_one_epoch

__all__ = [
    "autocast",
    "autocast_dtype",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "check_output",
    "evaluate",
    "fit",
    "output_paths",
    "predict_logits",
    "resolve_device",
    "scores",
    "train_one_epoch",
]
