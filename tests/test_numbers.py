"""Reading a row of digits (`predict --multi`): numbers written with MNIST test digits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mnistcnn.checkpoint import load_model
from mnistcnn.cli import main
from mnistcnn.model.nets import DigitNet
from mnistcnn.photo.row import segment
from mnistcnn.predict.classify import classify
from mnistcnn.predict.number import _read, predict_numbers, read_number

pytestmark = pytest.mark.slow  # uses the session's trained digit model


def write_number(digits: list[np.ndarray], path: Path, *, height: int, gap: int) -> None:
    """Dark digits side by side on white paper, each `height` px tall, `gap` px apart."""
    margin = height // 2
    width = 2 * margin + len(digits) * height + (len(digits) - 1) * gap
    sheet = np.zeros((height + 2 * margin, width), np.uint8)
    for i, digit in enumerate(digits):
        ink = Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC)
        x = margin + i * (height + gap)
        sheet[margin : margin + height, x : x + height] = np.asarray(ink)
    Image.fromarray(255 - sheet).convert("RGB").save(path)


@pytest.fixture(scope="module")
def numbers(mnist_test: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    """20 numbers of 2-4 digits, each written with other test digits, sizes and gaps."""
    out = tmp_path_factory.mktemp("numbers")
    rng = np.random.default_rng(1)
    truth: dict[Path, str] = {}
    for n in range(20):
        picks = rng.choice(len(mnist_test), int(rng.integers(2, 5)), replace=False)
        path = out / f"number{n:02d}.png"
        write_number(
            [mnist_test.images[i].numpy() for i in picks],
            path,
            height=int(rng.integers(40, 120)),
            gap=int(rng.integers(4, 30)),
        )
        truth[path] = "".join(str(int(mnist_test.labels[i])) for i in picks)
    return truth


def test_numbers_are_read_left_to_right(digit_model: DigitNet, numbers: dict[Path, str]) -> None:
    reads = list(predict_numbers(digit_model, list(numbers)))
    assert [r.path for r in reads] == [str(p) for p in numbers]
    assert not [r.error for r in reads if r.error]
    lengths = np.mean([len(r.number) == len(numbers[Path(r.path)]) for r in reads])
    right = np.mean([r.number == numbers[Path(r.path)] for r in reads])
    assert lengths >= 0.9, [(r.number, numbers[Path(r.path)]) for r in reads]
    # ~3 digits at ~97 % each: most whole numbers right
    assert right >= 0.75, [(r.number, numbers[Path(r.path)]) for r in reads]
    for r in reads:
        assert len(r.digits) == len(r.boxes) == len(r.number)
        lefts = [box[0] for box in r.boxes]
        assert lefts == sorted(lefts)
        assert 0 < r.probability <= 1


def test_tta_reads_numbers_with_the_views_probabilities(
    digit_model: DigitNet, numbers: dict[Path, str]
) -> None:
    reads = list(predict_numbers(digit_model, list(numbers), use_tta=True))
    right = np.mean([r.number == numbers[Path(r.path)] for r in reads])
    assert right >= 0.75, [(r.number, numbers[Path(r.path)]) for r in reads]
    for path in list(numbers)[:5]:
        read, digits = _read(digit_model, path, segment(path), 1, use_tta=True)
        views = classify(digit_model, np.stack([d.image for d in digits]), use_tta=True)
        assert [top[0][1] for top in read.digits] == pytest.approx(views.max(1).values.tolist())
        plain = classify(digit_model, np.stack([d.image for d in digits]))
        assert not torch.allclose(views, plain)  # the views were used, not the plain image


def test_read_number_top_k(digit_model: DigitNet, numbers: dict[Path, str]) -> None:
    path = next(iter(numbers))
    read = read_number(digit_model, path, top_k=3)
    assert all(len(top) == 3 for top in read.digits)
    assert read.number == "".join(str(top[0][0]) for top in read.digits)


def test_blank_and_broken_files_are_error_entries(
    digit_model: DigitNet, numbers: dict[Path, str], tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 80), 255).save(blank)
    broken = tmp_path / "broken.png"
    broken.write_text("no image here")
    good = next(iter(numbers))
    reads = list(predict_numbers(digit_model, [blank, good, broken]))
    assert reads[0].number is None and "no digit" in reads[0].error
    assert reads[1].error is None and reads[1].number
    assert reads[2].number is None and str(broken) in reads[2].error


def test_cli_multi(
    capsys: pytest.CaptureFixture[str],
    digit_model_run: dict,
    numbers: dict[Path, str],
    tmp_path: Path,
) -> None:
    paths = list(numbers)[:3]
    views = tmp_path / "views"
    args = ["predict", "--multi", *map(str, paths), "-m", str(digit_model_run["path"])]
    assert main([*args, "--save-preprocessed", str(views)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out] == [str(p) for p in paths]
    assert {f"{p.stem}.png" for p in paths} <= {p.name for p in views.iterdir()}
    for path in paths:
        with Image.open(views / f"{path.stem}.png") as img:
            assert img.height == 28 and img.width % 28 == 0  # one 28x28 tile per digit

    assert main([*args, "--tta", "--json"]) == 0
    with_tta = [r["probability"] for r in json.loads(capsys.readouterr().out)]
    model = load_model(digit_model_run["path"])
    expected = [r.probability for r in predict_numbers(model, paths, use_tta=True)]
    assert with_tta == pytest.approx(expected)
    assert with_tta != pytest.approx([r.probability for r in predict_numbers(model, paths)])

    assert main([*args, "--json", "-k", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    assert all(len(top) == 2 for r in results for top in r["digits"])


def test_cli_multi_with_a_blank_exits_1(
    capsys: pytest.CaptureFixture[str], digit_model_run: dict, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 80), 255).save(blank)
    code = main(["predict", "--multi", str(blank), "-m", str(digit_model_run["path"])])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("mnistcnn: error: ") and "no digit" in err
