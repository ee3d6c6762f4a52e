"""Training: build (device, loss, optimizer, schedule), loops (train/evaluate), state
(checkpoints, RNGs), fitting (`fit`, the orchestrator), distributed and transfer learning."""

from __future__ import annotations

from mnistcnn.train.build import (
    autocast,
    autocast_dtype,
    build_loss,
    build_optimizer,
    build_scheduler,
    resolve_device,
)
from mnistcnn.train.fitting import fit
from mnistcnn.train.loops import evaluate, predict_logits, scores, train_one_epoch
from mnistcnn.train.state import check_output, output_paths

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
