"""Classification metrics from logits: confusion matrix, per-class precision/recall/F1."""

from __future__ import annotations

from typing import Any

import torch

from mnistcnn.model.nets import NUM_CLASSES


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(10, 10) counts; row = true label, column = predicted label."""
    flat = labels.long().cpu() * NUM_CLASSES + preds.long().cpu()
    return torch.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of rows of `scores` (logits or probabilities) whose largest is at the label."""
    return (scores.argmax(1).cpu() == labels.cpu()).double().mean().item()


def classification_report(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Loss, accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    logits, labels = logits.float().cpu(), labels.cpu()
    preds = logits.argmax(1)
    cm = confusion_matrix(preds, labels)
    tp = cm.diag().double()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    columns = zip(precision.tolist(), recall.tolist(), f1.tolist(), cm.sum(1).tolist(), strict=True)
    per_class = [
        {"digit": d, "precision": p, "recall": r, "f1": f, "support": n}
        for d, (p, r, f, n) in enumerate(columns)
    ]
    return {
        "images": len(labels),
        "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
        "accuracy": accuracy(logits, labels),
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def format_metrics(report: dict[str, Any]) -> str:
    """The report as text tables."""
    lines = [
        f"test images: {report['images']}",
        f"loss: {report['loss']:.4f}",
        f"accuracy: {100 * report['accuracy']:.2f} %",
    ]
    if report.get("stored_accuracy") is not None:
        stored = 100 * report["stored_accuracy"]
        lines.append(f"(the model file says {stored:.2f} %, measured when it was saved)")
    lines += ["", "digit  precision  recall     f1  support"]
    lines += [
        f"{c['digit']:>5}  {c['precision']:>9.4f}  {c['recall']:>6.4f}  {c['f1']:.4f}"
        f"  {c['support']:>7}"
        for c in report["per_class"]
    ]
    header = "     " + "".join(f"{d:>6}" for d in range(NUM_CLASSES))
    lines += ["", "confusion (rows: true, columns: predicted)", header]
    lines += [
        f"{d:>5}" + "".join(f"{n:>6}" for n in row) for d, row in enumerate(report["confusion"])
    ]
    return "\n".join(lines)
