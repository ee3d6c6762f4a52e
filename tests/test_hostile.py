"""Nothing let in: every hostile or odd image a stranger can send to `predict` gets a one-line
answer (an error entry or a correct label), never a traceback, and never stops the other files."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mnistcnn.cli import main
from mnistcnn.predict import files as answers
from mnistcnn.predict.classify import classifier

N_MANY = 2_500


def _paper(digit: np.ndarray, side: int = 140) -> Image.Image:
    """A 28x28 MNIST digit as dark ink on white paper, `side` pixels square."""
    return Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BICUBIC)


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (valid CRCs) but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    header = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\0" * 64)
    idat_chunk = b"IDAT" + idat
    body = struct.pack(">I", len(idat)) + idat_chunk + struct.pack(">I", zlib.crc32(idat_chunk))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + body + end)


def _one(model: Any, path: Path) -> answers.Answer:
    return next(answers.predict_paths(classifier(model), [path]))


@pytest.fixture
def digits(mnist_test: Any) -> dict[int, np.ndarray]:
    """One test-set example of each digit whose label the digit model gets right."""
    found: dict[int, np.ndarray] = {}
    for image, label in zip(mnist_test.images[:200], mnist_test.labels[:200], strict=True):
        found.setdefault(int(label), image.numpy())
    return found


@pytest.mark.parametrize("side", [50_000, 10_000])
def test_decompression_bomb_is_refused_before_decoding(
    digit_model: Any, tmp_path: Path, side: int
) -> None:
    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, side, side)
    result = _one(digit_model, bomb)
    assert result.label is None
    assert re.search("too large|decompression bomb", result.error), result.error


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(digit_model: Any, digits: dict, tmp_path: Path, fmt: str) -> None:
    whole = tmp_path / f"whole.{fmt.lower()}"
    _paper(digits[3], 400).convert("RGB").save(whole, fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = _one(digit_model, cut)
    assert result.label is None and "cannot decode" in result.error


def test_text_named_png_and_empty_file(digit_model: Any, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.png"
    empty.touch()
    assert "not an image" in _one(digit_model, text).error
    assert "empty file" in _one(digit_model, empty).error


def test_animated_gif_uses_the_first_frame(digit_model: Any, digits: dict, tmp_path: Path) -> None:
    gif = tmp_path / "anim.gif"
    first, second = _paper(digits[3]), _paper(digits[7])
    first.save(gif, save_all=True, append_images=[second], duration=100, loop=0)
    assert _one(digit_model, gif).label == 3


def test_cmyk_jpeg_and_16_bit_grayscale(digit_model: Any, digits: dict, tmp_path: Path) -> None:
    cmyk = tmp_path / "cmyk.jpg"
    _paper(digits[4]).convert("CMYK").save(cmyk, "JPEG", quality=95)
    assert Image.open(cmyk).mode == "CMYK"
    deep = tmp_path / "deep.png"
    paper16 = np.asarray(_paper(digits[2]), dtype=np.uint16) * 257
    Image.fromarray(paper16).save(deep)
    assert Image.open(deep).mode.startswith("I")
    assert _one(digit_model, cmyk).label == 4
    assert _one(digit_model, deep).label == 2


@pytest.mark.parametrize("value", [0, 255])
def test_blank_images_say_no_digit(digit_model: Any, tmp_path: Path, value: int) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), value).save(blank)
    result = _one(digit_model, blank)
    assert result.label is None and "no digit" in result.error


def test_a_folder_streams_in_chunks(
    digit_model: Any, digits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):  # two chunks of 8 and one of 4
        _paper(digits[i % 10], 56).save(tmp_path / f"{i:03d}.png")
    calls = []
    real = answers.preprocess
    monkeypatch.setattr(answers, "preprocess", lambda p, **kw: calls.append(p) or real(p, **kw))
    results = answers.predict_paths(classifier(digit_model), [tmp_path], chunk=8)
    first = next(results)
    assert first.path.endswith("000.png") and len(calls) == 8  # only one chunk read so far
    assert len([first, *results]) == 20 and len(calls) == 20


@pytest.mark.slow
def test_thousands_of_images_one_bad_one(
    digit_model_run: dict, mnist_test: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    # Memory does not grow with the folder (test_a_folder_streams_in_chunks); 2,500 files keep
    # this end-to-end run short. docs/reliability.md reports a 10,000-file run.
    for i in range(N_MANY):
        Image.fromarray(255 - mnist_test.images[i].numpy()).save(folder / f"{i:05d}.png")
    (folder / "01234.png").write_bytes(b"garbage")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnistcnn",
            "predict",
            str(folder),
            "-m",
            str(digit_model_run["path"]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert len(lines) == N_MANY - 1
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 1 and "01234.png" in errors[0] and "Traceback" not in run.stderr
    labels = mnist_test.labels[:N_MANY].tolist()
    right = sum(
        int(line.split(": ")[1].split()[0]) == labels[int(Path(line.split(":")[0]).stem)]
        for line in lines
    )
    assert right / len(lines) > 0.95


def test_missing_and_directory_inputs_exit_1(
    digit_model_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(digit_model_run["path"])
    assert main(["predict", str(tmp_path / "nope.png"), "-m", model]) == 1
    assert "image not found" in capsys.readouterr().err
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert main(["predict", str(empty_dir), "-m", model]) == 1
    assert "no image files found" in capsys.readouterr().err
