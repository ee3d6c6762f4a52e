"""Answer on image files: MNIST test digits re-drawn as photos of paper, and bad files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import STYLES
from PIL import Image

from mnistcnn.cli import main
from mnistcnn.model.nets import DigitNet
from mnistcnn.photo.decode import open_image
from mnistcnn.photo.digit import preprocess
from mnistcnn.predict.classify import classifier, classify
from mnistcnn.predict.files import Answer, expand_inputs, predict_paths

pytestmark = pytest.mark.slow  # every test here uses the session's trained digit model


def blank(path: Path, size: int = 120) -> Path:
    Image.new("RGB", (size, size), (250, 250, 250)).save(path)
    return path


@pytest.fixture
def mixed(tmp_path: Path, draw: Callable[..., None], seven: np.ndarray) -> dict[str, Path]:
    """One good digit among files that cannot be predicted."""
    files = {
        "good": tmp_path / "good.png",
        "blank": blank(tmp_path / "blank.png"),
        "text": tmp_path / "notes.png",
        "empty": tmp_path / "empty.jpg",
        "missing": tmp_path / "missing.png",
        "good2": tmp_path / "good2.jpg",
    }
    draw(seven, files["good"], canvas=160, height=100, at=(40, 20), style="RGB")
    draw(seven, files["good2"], canvas=90, height=60, at=(0, 30), style="JPEG")
    files["text"].write_text("this is not a picture\n")
    files["empty"].touch()
    return files


# --- accuracy on re-drawn digits -----------------------------------------------------------


@pytest.fixture(scope="module")
def redrawn(digit_model: DigitNet, digit_images: dict[Path, int]) -> list[Answer]:
    """The predictions for all 200 re-drawn digits, made once."""
    return list(predict_paths(classifier(digit_model), list(digit_images)))


def test_redrawn_test_digits_are_recognised(
    redrawn: list[Answer], digit_images: dict[Path, int]
) -> None:
    assert [p.path for p in redrawn] == [str(p) for p in digit_images]
    assert not [p.error for p in redrawn if p.error]
    right = [p.label == digit_images[Path(p.path)] for p in redrawn]
    accuracy = sum(right) / len(right)
    assert accuracy >= 0.95, f"{accuracy:.3f} on {len(right)} re-drawn MNIST test digits"


@pytest.mark.parametrize("style", STYLES)
def test_every_image_style_is_recognised(
    redrawn: list[Answer], digit_images: dict[Path, int], style: str
) -> None:
    # The 200 images cycle through the styles: each style must do well on its own 50.
    mine = [p for i, p in enumerate(redrawn) if STYLES[i % len(STYLES)] == style]
    accuracy = np.mean([p.label == digit_images[Path(p.path)] for p in mine])
    assert accuracy >= 0.9, f"{style}: {accuracy:.2f}"


def test_preprocessed_image_looks_like_mnist(
    digit_images: dict[Path, int], mnist_test: Any
) -> None:
    for path in list(digit_images)[:8]:
        image = preprocess(path).image
        assert image.shape == (28, 28)
        assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.5
        # white ink on black, the digit near the centre, a dark border, like MNIST
        assert image[0].max() < 0.2 and image[-1].max() < 0.2
        assert image[:, 0].max() < 0.2 and image[:, -1].max() < 0.2
        rows, cols = np.nonzero(image > 0.3)
        assert abs(rows.mean() - 13.5) < 3 and abs(cols.mean() - 13.5) < 3


def test_open_image_reads_each_style(digit_images: dict[Path, int]) -> None:
    for path in list(digit_images)[:4]:
        img = open_image(path)
        assert min(img.size) >= 60


# --- top-k, probabilities, chunks ----------------------------------------------------------


def test_top_k(digit_model: DigitNet, digit_images: dict[Path, int]) -> None:
    paths = list(digit_images)[:10]
    for p in predict_paths(classifier(digit_model), paths, top_k=3):
        assert len(p.top) == 3
        assert p.top[0] == (p.label, p.probability)
        probs = [prob for _, prob in p.top]
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert len({label for label, _ in p.top}) == 3
    (one,) = predict_paths(classifier(digit_model), paths[:1])
    assert len(one.top) == 1
    (all_ten,) = predict_paths(classifier(digit_model), paths[:1], top_k=50)
    assert len(all_ten.top) == 10
    assert sum(prob for _, prob in all_ten.top) == pytest.approx(1, abs=1e-5)


def test_chunks_do_not_change_the_answers(
    digit_model: DigitNet, digit_images: dict[Path, int], mixed: dict[str, Path]
) -> None:
    paths = [*list(digit_images)[:5], *mixed.values(), *list(digit_images)[5:9]]
    whole = list(predict_paths(classifier(digit_model), paths))
    chunked = list(predict_paths(classifier(digit_model), paths, chunk=3))
    assert [p.path for p in chunked] == [str(p) for p in paths]
    assert [(p.label, p.error) for p in whole] == [(p.label, p.error) for p in chunked]
    for a, b in zip(whole, chunked, strict=True):
        if a.probability is not None:
            assert a.probability == pytest.approx(b.probability, abs=1e-5)


def test_classify_gives_probabilities(digit_model: DigitNet, mnist_test: Any) -> None:
    images = mnist_test.images[:16].numpy().astype(np.float32) / 255
    probs = classify(digit_model, images)
    assert probs.shape == (16, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(16))
    assert (probs.argmax(1) == mnist_test.labels[:16]).float().mean() >= 0.9


def test_classify_accepts_float64_images(digit_model: DigitNet, mnist_test: Any) -> None:
    # A 28x28 float image in [0, 1] is the documented input; its precision should not matter.
    images = mnist_test.images[:4].numpy().astype(np.float64) / 255
    assert classify(digit_model, images).shape == (4, 10)


# --- files that cannot be predicted --------------------------------------------------------


def test_bad_files_become_error_entries_and_the_rest_go_on(
    digit_model: DigitNet, mixed: dict[str, Path]
) -> None:
    results: dict[str, Answer] = {
        name: p
        for name, p in zip(
            mixed, predict_paths(classifier(digit_model), mixed.values()), strict=True
        )
    }
    assert [p.path for p in results.values()] == [str(p) for p in mixed.values()]
    for name in ("good", "good2"):
        assert results[name].error is None and results[name].label == 7
    for name in ("blank", "text", "empty", "missing"):
        assert results[name].label is None and results[name].error
        assert str(mixed[name]) in results[name].error
    assert "no digit" in results["blank"].error
    assert "not an image" in results["text"].error
    assert "empty" in results["empty"].error
    assert "not found" in results["missing"].error


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (128, 128, 128)])
def test_blank_images_of_any_colour_hold_no_digit(
    digit_model: DigitNet, tmp_path: Path, colour: tuple[int, int, int]
) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (80, 60), colour).save(path)
    (p,) = predict_paths(classifier(digit_model), [path])
    assert p.label is None and "no digit" in p.error


def test_transparent_image_with_nothing_on_it(digit_model: DigitNet, tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(path)
    (p,) = predict_paths(classifier(digit_model), [path])
    assert p.label is None and "no digit" in p.error


def test_truncated_png(digit_model: DigitNet, mixed: dict[str, Path]) -> None:
    data = mixed["good"].read_bytes()
    mixed["good"].write_bytes(data[: len(data) // 2])
    (p,) = predict_paths(classifier(digit_model), [mixed["good"]])
    assert p.label is None and p.error


# --- folders and saved views ---------------------------------------------------------------


def test_directory_input_is_expanded_to_its_images_sorted(
    digit_model: DigitNet, tmp_path: Path, draw: Callable[..., None], seven: np.ndarray
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.jpeg"):
        style = "RGB" if name.endswith("png") else "JPEG"
        draw(seven, folder / name, canvas=100, height=70, at=(10, 20), style=style)
    (folder / "readme.txt").write_text("not an image")
    (folder / "sub").mkdir()
    assert [p.name for p in expand_inputs([folder])] == ["a.JPG", "b.png", "c.jpeg"]
    predictions = list(predict_paths(classifier(digit_model), [folder]))
    assert [Path(p.path).name for p in predictions] == ["a.JPG", "b.png", "c.jpeg"]
    assert [p.label for p in predictions] == [7, 7, 7]


def test_a_folder_of_class_subfolders_is_read_in_sorted_order(
    digit_model_run: dict,
    mnist_test: Any,
    tmp_path: Path,
    draw: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A data set laid out 0/ ... 9/: every image in the subfolders, sorted by path.
    folder = tmp_path / "digits"
    files = {"3/b.png": 3, "3/a.png": 3, "1/b.png": 1, "1/a.png": 1, "1/deeper/c.png": 0}
    files |= {"0/b.png": 0, "0/a.png": 0}
    for name, label in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image = mnist_test.images[int((mnist_test.labels == label).nonzero()[0])].numpy()
        draw(image, folder / name, canvas=100, height=70, at=(10, 20), style="RGB")
    (folder / "notes.txt").write_text("not an image")
    expected = sorted(files)
    assert [p.relative_to(folder).as_posix() for p in expand_inputs([folder])] == expected
    assert main(["predict", str(folder), "-m", str(digit_model_run["path"]), "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [Path(a["path"]).relative_to(folder).as_posix() for a in answers] == expected
    assert [a["label"] for a in answers] == [files[name] for name in expected]


def test_save_preprocessed_writes_28x28_pngs(
    digit_model: DigitNet, digit_images: dict[Path, int], mixed: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "views"
    paths = [*list(digit_images)[:3], mixed["blank"]]
    list(predict_paths(classifier(digit_model), paths, save_dir=out))
    written = sorted(p for p in out.iterdir() if not p.name.endswith(".steps.png"))
    assert [p.name for p in written] == sorted(f"{p.stem}.png" for p in paths[:3])
    for view, source in zip(written, sorted(paths[:3]), strict=True):
        with Image.open(view) as img:
            assert img.size == (28, 28) and img.mode == "L"
            saved = np.asarray(img, dtype=np.float32) / 255
        assert np.abs(saved - preprocess(source).image).max() <= 1 / 255 + 1e-6


def test_save_preprocessed_keeps_files_with_the_same_stem_apart(
    digit_model: DigitNet,
    mixed: dict[str, Path],
    tmp_path: Path,
    draw: Callable[..., None],
    seven: np.ndarray,
) -> None:
    # digit.png and digit.jpg are two inputs: each needs its own view.
    png, jpg = tmp_path / "digit.png", tmp_path / "digit.jpg"
    draw(seven, png, canvas=100, height=70, at=(10, 20), style="RGB")
    draw(seven, jpg, canvas=100, height=70, at=(10, 20), style="JPEG")
    out = tmp_path / "views"
    list(predict_paths(classifier(digit_model), [png, jpg], save_dir=out))
    views = [p for p in out.iterdir() if not p.name.endswith(".steps.png")]
    assert len(views) == 2
