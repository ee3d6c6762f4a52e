"""Confusion matrix and per-class report on hand-checked predictions."""

from __future__ import annotations

import math

import pytest
import torch

from mnistcnn.metrics import classification_report, confusion_matrix, format_metrics


def one_hot_logits(preds: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), 10).float() * 10


def test_confusion_matrix_rows_are_true_labels() -> None:
    cm = confusion_matrix(torch.tensor([1, 1, 2, 0]), torch.tensor([1, 2, 2, 0]))
    assert cm.shape == (10, 10) and int(cm.sum()) == 4
    assert cm[1, 1] == 1 and cm[2, 1] == 1 and cm[2, 2] == 1 and cm[0, 0] == 1


def test_report_numbers() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = [0, 0, 1, 1, 1, 0]
    report = classification_report(one_hot_logits(preds), labels)
    assert report["images"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    zero, one, two = report["per_class"][:3]
    # digit 0: predicted 3 times, right twice; 3 true zeros
    assert zero["precision"] == pytest.approx(2 / 3) and zero["recall"] == pytest.approx(2 / 3)
    assert one["precision"] == pytest.approx(2 / 3) and one["recall"] == 1.0
    assert one["f1"] == pytest.approx(0.8)
    assert two == {"digit": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # digits never seen nor predicted: zeros, not NaN
    assert all(not math.isnan(c["f1"]) and c["support"] == 0 for c in report["per_class"][3:])
    assert report["confusion"][2][0] == 1
    expected_loss = torch.nn.functional.cross_entropy(one_hot_logits(preds), labels).item()
    assert report["loss"] == pytest.approx(expected_loss)


def test_format_metrics() -> None:
    labels = torch.arange(10)
    text = format_metrics(classification_report(one_hot_logits(list(range(10))), labels))
    lines = text.splitlines()
    assert lines[0] == "test images: 10"
    assert lines[2] == "accuracy: 100.00 %"
    assert lines[5].split() == ["0", "1.0000", "1.0000", "1.0000", "1"]
    assert "confusion (rows: true, columns: predicted)" in lines
    assert lines[-1].split() == ["9", *["0"] * 9, "1"]
