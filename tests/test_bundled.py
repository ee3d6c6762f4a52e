"""The model in the wheel, the default model of predict/serve/eval, and eval of an ensemble."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mnistcnn.bundled import BUNDLED, TRAINED, default_model
from mnistcnn.checkpoint import load_model, load_state
from mnistcnn.cli import main


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_bundled_file_is_package_data_with_its_recipe() -> None:
    assert (files("mnistcnn") / "bundled" / "base.pth").is_file()
    state = load_state(BUNDLED)  # weights_only=True
    meta = state["_extra_state"]["meta"]
    assert meta["recipe"] == "configs/base.yaml" and meta["seed"] == 0
    assert tuple(int(v) for v in meta["torch"].split(".")[:2]) >= (2, 10)
    assert meta["test_accuracy"] >= 0.995 and meta["val_accuracy"] >= 0.995
    assert 0 < meta["temperature"] < 5 and 0 < meta["tta_temperature"] < 5
    assert "train_seconds" not in meta  # a rebuild cannot repeat a timing
    assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))


def test_default_model_is_the_trained_one_when_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path, note = default_model()
    assert path == BUNDLED and note.endswith("using the bundled model (base recipe)")
    TRAINED.parent.mkdir()
    shutil.copy(BUNDLED, TRAINED)
    path, note = default_model()
    assert path == TRAINED and note == "mnistcnn: using models/cnn.pth (no model given)"


def test_predict_without_a_model_reads_with_the_bundled_one(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    digit_images: dict[Path, int],
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = list(digit_images)[:20]
    code, out, err = cli(capsys, "predict", *paths, "--json")
    assert code == 0
    assert err.splitlines()[0].endswith("using the bundled model (base recipe)")
    answers = json.loads(out)
    assert [a["label"] for a in answers] == [digit_images[p] for p in paths]


def test_serve_without_a_model_serves_the_bundled_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    from mnistcnn.serve import app

    served: list[Any] = []
    monkeypatch.setattr(app, "serve", lambda *args: served.append(args))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "serve", "--port", "0")
    assert code == 0 and served == [(str(BUNDLED), "127.0.0.1", 0)]
    assert "bundled model" in err


@pytest.mark.slow
def test_out_of_the_box_predict_and_eval_in_an_empty_folder(
    tmp_path: Path, data_dir: Path, digit_images: dict[Path, int]
) -> None:
    """As a new user: no model trained, predict answers; eval reproduces the stored accuracy."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = list(digit_images)[20:26]

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mnistcnn", *map(str, args)]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)

    done = run("predict", *paths)
    assert done.returncode == 0, done.stderr
    assert "bundled model" in done.stderr and "Traceback" not in done.stderr
    labels = [int(line.split(": ")[1].split()[0]) for line in done.stdout.splitlines()]
    assert labels == [digit_images[p] for p in paths]
    done = run("eval", "--data-dir", data_dir, "--no-download", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    stored = load_model(BUNDLED).meta["test_accuracy"]
    assert report["accuracy"] == pytest.approx(stored, abs=1e-4)
    assert report["stored_accuracy"] == stored
    assert list(tmp_path.iterdir()) == []  # nothing written where the user stands


@pytest.mark.slow
def test_eval_of_several_models_averages_their_calibrated_probabilities(
    capsys: pytest.CaptureFixture[str], tiny_run: dict, digit_model_run: dict, data_dir: Path
) -> None:
    from mnistcnn.data import load_mnist
    from mnistcnn.predict.classify import probabilities
    from mnistcnn.train.loops import predict_logits

    paths = [tiny_run["path"], digit_model_run["path"]]
    code, out, err = cli(capsys, "eval", *paths, "--data-dir", data_dir, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    members = report["ensemble"]["members"]
    assert [m["model"] for m in members] == [str(p) for p in paths]
    for member, run in zip(members, (tiny_run, digit_model_run), strict=True):
        assert member["accuracy"] == pytest.approx(run["test_accuracy"], abs=1e-6)
    # The same average by hand.
    test = load_mnist(data_dir, train=False, download=False)
    probs = []
    for path in paths:
        model = load_model(path)
        logits = predict_logits(model, test, 1000, torch.device("cpu"))
        probs.append(probabilities(logits[None], model.meta, False))
    mean = torch.stack(probs).mean(0)
    expected = (mean.argmax(1) == test.labels).double().mean().item()
    assert report["accuracy"] == pytest.approx(expected, abs=2e-4)
    assert np.array(report["confusion"]).sum() == 10000
    code, out, _ = cli(capsys, "eval", *paths, "--data-dir", data_dir)
    assert code == 0
    assert "ensemble of 2 models (their calibrated probabilities averaged)" in out
    assert "points on its best member" in out and str(paths[1]) in out
    code, out, _ = cli(capsys, "eval", *paths, "--data-dir", data_dir, "--json", "--tta")
    tta = json.loads(out)["ensemble"]["tta"]
    assert code == 0 and tta["views"] == 7 and tta["accuracy"] > 0.9
    assert json.loads(out)["accuracy"] == report["accuracy"]  # the headline stays the plain one


def _uncalibrated(run: dict, folder: Path) -> Path:
    """A copy of a run's model without its temperatures (and its .yaml: the split it used)."""
    from mnistcnn.checkpoint import save_model

    model = load_model(run["path"])
    model.meta = {k: v for k, v in model.meta.items() if "temperature" not in k}
    path = folder / "raw.pth"
    save_model(model, path)
    shutil.copy(Path(run["path"]).with_suffix(".yaml"), path.with_suffix(".yaml"))
    return path


def test_an_ensemble_member_without_a_temperature_is_named(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    digit_images: dict[Path, int],
    digit_model_run: dict,
    tiny_run: dict,
) -> None:
    raw = _uncalibrated(tiny_run, tmp_path)
    paths = list(digit_images)[:3]
    code, _, err = cli(capsys, "predict", *paths, "-m", digit_model_run["path"], "-m", raw)
    assert code == 0
    assert err.strip() == (
        f"mnistcnn: note: {raw} has no stored temperature, so its probabilities are the raw "
        f"softmax (uncalibrated); store one with: mnistcnn calibrate {raw}"
    )


@pytest.mark.slow
def test_eval_fits_a_temperature_for_a_member_without_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_run: dict, data_dir: Path
) -> None:
    raw = _uncalibrated(tiny_run, tmp_path)
    code, out, _ = cli(capsys, "eval", tiny_run["path"], raw, "--data-dir", data_dir, "--json")
    assert code == 0
    ensemble = json.loads(out)["ensemble"]
    assert ensemble["fitted_now"] == [str(raw)]
    stored, fitted = (m["temperature"] for m in ensemble["members"])
    assert stored == tiny_run["temperature"] and fitted == pytest.approx(stored, rel=1e-6)


def test_a_model_given_twice_or_a_folder_for_the_default_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "eval", "a.pth", "./a.pth", "--no-download")
    assert (code, out) == (1, "")
    assert err.strip() == "mnistcnn: error: a model is given twice: a.pth ./a.pth"
    TRAINED.mkdir(parents=True)  # models/cnn.pth as a folder: said, not skipped
    code, out, err = cli(capsys, "predict", "x.png")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "mnistcnn: using models/cnn.pth (no model given)",
        "mnistcnn: error: not a file: models/cnn.pth",
    ]


def test_predict_with_several_models_reads_with_their_ensemble(
    capsys: pytest.CaptureFixture[str],
    digit_images: dict[Path, int],
    digit_model_run: dict,
    tiny_run: dict,
) -> None:
    from mnistcnn.photo.digit import preprocess
    from mnistcnn.predict.classify import classify

    runs, paths = (digit_model_run, tiny_run), list(digit_images)[:12]
    models = [arg for run in runs for arg in ("-m", run["path"])]
    code, out, err = cli(capsys, "predict", *paths, *models, "--json")
    assert (code, err) == (0, "")
    answers = json.loads(out)
    images = np.stack([preprocess(p).image for p in paths])
    mean = torch.stack([classify(load_model(run["path"]), images) for run in runs]).mean(0)
    assert [a["label"] for a in answers] == mean.argmax(1).tolist()
    expected = mean.max(1).values.tolist()
    assert [a["probability"] for a in answers] == pytest.approx(expected, abs=1e-5)


def test_an_ensemble_is_of_pth_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "predict", "x.png", "-m", "a.onnx", "-m", "b.pth")
    assert (code, out) == (1, "")
    assert err.strip() == (
        "mnistcnn: error: an ensemble (-m repeated) is of .pth models, not .onnx ones"
    )
