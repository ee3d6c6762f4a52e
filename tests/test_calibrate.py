"""Calibration and TTA: ECE on hand-checked and synthetic cases, temperature recovery, the
trained fixture model's stored temperatures, and `eval` / `calibrate` / `predict` on the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mnistcnn import calibrate, evaluate
from mnistcnn.calibrate import calibrate_logits, expected_calibration_error, fit_temperature, nll
from mnistcnn.checkpoint import load_model, save_model
from mnistcnn.cli import main
from mnistcnn.config.schema import DataConfig
from mnistcnn.data import Split, split_train_val
from mnistcnn.predict.classify import (
    VIEWS,
    classifier,
    classify,
    images_view_logits,
    probabilities,
    stored_temperatures,
    views,
)
from mnistcnn.predict.files import predict_paths
from mnistcnn.train import build


def top_probs(confidence: list[float], predicted: list[int]) -> torch.Tensor:
    """Rows with `confidence` on the predicted class and the rest spread evenly."""
    probs = torch.tensor([[(1 - c) / 9] * 10 for c in confidence], dtype=torch.float64)
    for row, (c, k) in enumerate(zip(confidence, predicted, strict=True)):
        probs[row, k] = c
    return probs


def test_ece_of_a_hand_computed_case() -> None:
    # Two answers at 0.9 (one right: bin accuracy 0.5) and two at 0.7 (both right).
    probs = top_probs([0.9, 0.9, 0.7, 0.7], [3, 3, 1, 2])
    labels = torch.tensor([3, 5, 1, 2])
    # |0.9 - 0.5| * 2/4 + |0.7 - 1.0| * 2/4 = 0.2 + 0.15
    assert expected_calibration_error(probs, labels) == pytest.approx(0.35, abs=1e-12)


def test_ece_of_a_perfectly_calibrated_case_is_about_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    confidence = 0.1 + 0.9 * torch.rand(n, generator=gen, dtype=torch.float64)
    right = torch.rand(n, generator=gen, dtype=torch.float64) < confidence
    labels = torch.where(right, 0, torch.randint(1, 10, (n,), generator=gen))
    probs = torch.full((n, 10), 0.0, dtype=torch.float64)
    probs[:, 0] = confidence
    probs[:, 1:] = ((1 - confidence) / 9)[:, None]
    assert expected_calibration_error(probs, labels) < 0.005
    # The same answers claimed at full confidence: ECE is the error rate.
    sure = torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), 10).double()
    assert expected_calibration_error(sure, labels) == pytest.approx(1 - right.double().mean())


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_t: float) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(20_000, 10, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / true_t, 1), 1, generator=gen).squeeze(1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert fit_temperature(logits, labels) == fitted  # deterministic
    before = expected_calibration_error(torch.softmax(logits, 1), labels)
    after = expected_calibration_error(torch.softmax(logits / fitted, 1), labels)
    assert after < 0.02 < before


def test_calibration_on_views_fits_both_temperatures() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = 2 * torch.randn(3, 5000, 10, generator=gen)
    labels = torch.multinomial(torch.softmax(logits[0], 1), 1, generator=gen).squeeze(1)
    cal = calibrate_logits(logits[0], labels, logits[:, :1000], labels[:1000])
    assert cal["temperature"] == pytest.approx(1.0, rel=0.1)
    assert cal["tta_temperature"] > 0 and cal["val_ece_calibrated"] <= cal["val_ece"] + 0.01
    assert stored_temperatures(cal) == {k: cal[k] for k in ("temperature", "tta_temperature")}
    assert stored_temperatures({}) is None
    assert stored_temperatures({"temperature": -1.0, "tta_temperature": 1.0}) is None


def test_fit_stores_temperatures_that_lower_validation_ece(digit_model_run: dict) -> None:
    meta = load_model(digit_model_run["path"]).meta
    assert stored_temperatures(meta) is not None
    assert meta["val_ece_calibrated"] <= meta["val_ece"]
    assert meta["val_ece_calibrated"] < 0.03


def test_fit_temperature_on_real_validation_logits(digit_model: Any, mnist_train: Any) -> None:
    # The fixture model's validation split (val_size 1000): the T fit() stored, found again.
    val = split_train_val(mnist_train, DataConfig(val_size=1000))[1]
    logits = images_view_logits(digit_model, val.images, 0, count=1)[0]
    fitted = fit_temperature(logits, val.labels)
    assert fitted == pytest.approx(digit_model.meta["temperature"], rel=1e-4)
    assert nll(logits, val.labels, fitted) < nll(logits, val.labels)


def test_tta_views_shape_identity_and_probabilities(digit_model: Any, mnist_test: Any) -> None:
    images = mnist_test.images[:100].float().div(255).unsqueeze(1)
    moved = views(images[:4])
    assert moved.shape == (len(VIEWS) * 4, 1, 28, 28)
    assert torch.allclose(moved[:4], images[:4], atol=1e-6)  # view 0 is the input itself
    assert not torch.allclose(moved[4:8], images[:4])
    probs = classify(digit_model, images.squeeze(1).numpy(), use_tta=True)
    assert probs.shape == (100, 10)
    assert torch.allclose(probs.sum(1), torch.ones(100), atol=1e-5)


@pytest.mark.slow
def test_tta_is_about_as_accurate_as_the_plain_input(digit_model: Any, mnist_test: Any) -> None:
    images = mnist_test.images[:1000].float().div(255).unsqueeze(1)
    probs = classify(digit_model, images.squeeze(1).numpy(), use_tta=True)
    labels = mnist_test.labels[:1000]
    plain = classify(digit_model, images.squeeze(1).numpy()).argmax(1)
    with_tta = (probs.argmax(1) == labels).float().mean().item()
    assert with_tta >= (plain == labels).float().mean().item() - 0.01


def test_probabilities_of_an_uncalibrated_model_are_the_raw_softmax() -> None:
    logits = torch.randn(2, 4, 10)
    raw = torch.softmax(logits[0], 1)
    assert torch.allclose(probabilities(logits, {}, use_tta=False), raw)
    meta = {"temperature": 2.0, "tta_temperature": 0.5}
    assert torch.allclose(probabilities(logits, meta, False), torch.softmax(logits[0] / 2, 1))
    assert torch.allclose(probabilities(logits, meta, True), torch.softmax(logits.mean(0) * 2, 1))


@pytest.mark.parametrize("amp", [True, False])
def test_eval_amp_runs_the_tta_views_in_bf16_too(
    monkeypatch: pytest.MonkeyPatch,
    mnist_test: Any,
    tiny_run: dict,
    data_dir: Path,
    tmp_path: Path,
    amp: bool,
) -> None:
    test = Split(mnist_test.images[:200], mnist_test.labels[:200])
    monkeypatch.setattr(evaluate, "load_mnist", lambda *args, **kwargs: test)
    monkeypatch.setattr(build, "autocast_dtype", lambda device: torch.bfloat16)  # as with AMX
    seen = []

    def spy(model: Any, images: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.is_autocast_enabled("cpu"))
        return images_view_logits(model, images, *args, **kwargs)

    monkeypatch.setattr(calibrate, "images_view_logits", spy)
    monkeypatch.setattr(evaluate, "images_view_logits", spy)
    copy = shutil.copy(tiny_run["path"], tmp_path / "copy.pth")
    for paths in ([tiny_run["path"]], [tiny_run["path"], copy]):  # one model, an ensemble
        evaluate.evaluate_models(paths, data_dir, torch.device("cpu"), use_tta=True, amp=amp)
    assert seen == [amp, amp]


@pytest.mark.slow
def test_eval_reports_ece_before_and_after_and_tta(
    capsys: pytest.CaptureFixture[str], digit_model_run: dict, data_dir: Path
) -> None:
    args = ["eval", str(digit_model_run["path"]), "--data-dir", str(data_dir), "--no-download"]
    assert main([*args, "--tta", "--json"]) == 0
    cal = json.loads(capsys.readouterr().out)["calibration"]
    assert cal["temperature_source"].startswith("stored in the model")
    assert cal["ece_calibrated"] < cal["ece"] and cal["ece_calibrated"] < 0.03
    assert cal["nll_calibrated"] <= cal["nll"]
    assert cal["tta"]["views"] == len(VIEWS)
    assert cal["tta"]["accuracy"] >= cal["tta"]["accuracy_without"] - 0.01
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "calibration (15-bin expected calibration error, ECE)" in out
    assert "% after temperature scaling" in out and "test-time augmentation" not in out


@pytest.mark.slow
def test_an_old_model_is_calibrated_on_its_split_then_calibrate_stores_it(
    capsys: pytest.CaptureFixture[str],
    digit_model_run: dict,
    data_dir: Path,
    mnist_test: Any,
    tmp_path: Path,
) -> None:
    model = load_model(digit_model_run["path"])
    model.meta = {k: v for k, v in model.meta.items() if "temperature" not in k}
    old = tmp_path / "old.pth"
    save_model(model, old)
    shutil.copy(Path(digit_model_run["path"]).with_suffix(".yaml"), old.with_suffix(".yaml"))
    args = [str(old), "--data-dir", str(data_dir), "--no-download"]
    assert main(["eval", *args, "--json"]) == 0
    cal = json.loads(capsys.readouterr().out)["calibration"]
    # The fixture's own split (val_size 1000 in its yaml): the same T fit() stored.
    assert "fitted now on the validation split: 1000 images" in cal["temperature_source"]
    stored = load_model(digit_model_run["path"]).meta
    assert cal["temperature"] == pytest.approx(stored["temperature"], rel=1e-4)
    Image.fromarray(mnist_test.images[0].numpy()).save(tmp_path / "seven.png")
    assert main(["predict", str(tmp_path / "seven.png"), "-m", str(old)]) == 0
    assert "no stored temperature" in capsys.readouterr().err  # the raw softmax, said so
    assert main(["calibrate", *args]) == 0
    assert "saved in" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "seven.png"), "-m", str(old)]) == 0
    assert capsys.readouterr().err == ""
    meta = load_model(old).meta
    assert meta["temperature"] == pytest.approx(stored["temperature"], rel=1e-4)
    assert meta["tta_temperature"] == pytest.approx(stored["tta_temperature"], rel=1e-4)


def _least_sure(model: Any, mnist_test: Any) -> tuple[np.ndarray, float]:
    images = mnist_test.images[:2000].numpy()
    top = classify(model, images.astype(np.float32) / 255).max(1).values
    i = int(top.argmin())
    return images[i], float(top[i])


@pytest.mark.slow
def test_predict_flags_low_confidence(
    capsys: pytest.CaptureFixture[str], digit_model_run: dict, mnist_test: Any, tmp_path: Path
) -> None:
    digit, p = _least_sure(load_model(digit_model_run["path"]), mnist_test)
    assert p < 0.5  # a genuinely ambiguous test digit
    unsure, sure = tmp_path / "unsure.png", mnist_test.images[0].numpy()
    Image.fromarray(digit).save(unsure)
    Image.fromarray(sure).save(tmp_path / "sure.png")
    model = ["-m", str(digit_model_run["path"])]
    # predict re-frames the image, so its probability is its own: flag around it.
    assert main(["predict", str(unsure), *model, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    shown = result["probability"]
    assert shown < 0.9
    files = [str(unsure), str(tmp_path / "sure.png")]
    assert main(["predict", *files, *model, "--min-confidence", f"{shown + 0.01}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "low confidence" in lines[0] and "low confidence" not in lines[1]
    assert main(["predict", str(unsure), *model, "--json", "--tta"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["low_confidence"] is (result["probability"] < 0.5)
    assert main(["predict", str(unsure), *model, "--json", "--min-confidence", "0"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["low_confidence"] is False


def test_blank_paper_and_pure_noise_say_no_digit(digit_model: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paper = 215 + 25 * np.linspace(0, 1, 640)[None, :] + rng.normal(0, 3, (480, 640))
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB").save(
        tmp_path / "paper.jpg", quality=85
    )
    for sigma in (10, 40, 80):
        noise = np.clip(128 + rng.normal(0, sigma, (300, 300)), 0, 255).astype(np.uint8)
        Image.fromarray(noise).save(tmp_path / f"noise{sigma}.png")
    results = list(predict_paths(classifier(digit_model, use_tta=True), [tmp_path]))
    assert len(results) == 4
    for r in results:
        assert r.label is None and r.error is not None and "no digit found" in r.error
