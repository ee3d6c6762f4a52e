"""`predict --multi`: a row of digits (a year, a phone number) segmented and read left to right.

Rows are drawn from MNIST *test* digits by benchmarks/photogen.py (photographed style) or pasted
by hand here (a dash, touching digits, a broken stroke) to pin down the segmentation rules.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnistcnn.cli import main
from mnistcnn.errors import ImageError
from mnistcnn.model.nets import DigitNet
from mnistcnn.photo.digit import Preprocessed, preprocess_image
from mnistcnn.photo.lines import remove_lines
from mnistcnn.photo.row import Row, segment
from mnistcnn.predict.number import (
    ENERGY_WEIGHT,
    WIDE_COST,
    _scores,
    predict_numbers,
    read_number,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import photogen


@pytest.fixture(scope="module")
def test_digits(mnist_test: Any) -> tuple[np.ndarray, np.ndarray]:
    return mnist_test.images.numpy(), mnist_test.labels.numpy()


@pytest.fixture(scope="module")
def numbers(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> dict[Path, str]:
    """16 photos of 4-digit numbers, digits apart, under conditions drawn at random."""
    folder = tmp_path_factory.mktemp("numbers")
    made = {}
    for i, photo in enumerate(
        photogen.photo_set(
            *test_digits, "multi", 16, seed=2, digits=4, conditions=photogen.ROW_CONDITIONS
        )
    ):
        path = folder / f"n{i:02d}{photo.suffix}"
        path.write_bytes(photo.data)
        made[path] = photo.label
    return made


def _sheet(test_digits: tuple[np.ndarray, np.ndarray], picks: list[int], gaps: list[int]) -> Any:
    """MNIST digits pasted as dark ink on white, left to right, `gaps` pixels apart (negative:
    overlapping boxes), each cropped to its ink and scaled to 96 px tall."""
    images, _ = test_digits
    glyphs = []
    for i in picks:
        digit = images[i]
        rows, cols = np.flatnonzero(digit.max(1) > 30), np.flatnonzero(digit.max(0) > 30)
        crop = Image.fromarray(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        scale = 96 / crop.height
        glyphs.append(np.asarray(crop.resize((round(crop.width * scale), 96), Image.BICUBIC)))
    width = sum(g.shape[1] for g in glyphs) + sum(gaps) + 80
    ink = np.zeros((180, width), np.uint8)
    x = 40
    for glyph, gap in zip(glyphs, [*gaps, 0], strict=True):
        area = ink[40:136, x : x + glyph.shape[1]]
        np.maximum(area, glyph, out=area)
        x += glyph.shape[1] + gap
    return Image.fromarray(255 - ink)


def _first(test_digits: tuple[np.ndarray, np.ndarray], label: int, skip: int = 0) -> int:
    return int(np.flatnonzero(test_digits[1] == label)[skip])


# --- segmentation, no model ---------------------------------------------------------------


def test_digits_apart_are_one_group_each(numbers: dict[Path, str]) -> None:
    counts = [len(segment(path).readings) for path in numbers]
    assert sum(c == 4 for c in counts) >= 15, counts


def test_groups_come_left_to_right_with_their_boxes(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    picks = [_first(test_digits, d) for d in (2, 0, 2, 6)]
    path = tmp_path / "year.png"
    _sheet(test_digits, picks, [30, 30, 30]).save(path)
    row = segment(path, steps=True)
    assert len(row.readings) == 4
    lefts = [options[0][0].box[0] for options in row.readings]
    assert lefts == sorted(lefts)
    assert all(d.image.shape == (28, 28) for options in row.readings for d in options[0])
    assert row.steps is not None and row.steps.rgb.shape[:2] == row.steps.labels.shape


def test_a_dash_and_specks_are_not_digits(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    picks = [_first(test_digits, d) for d in (5, 5, 5, 1, 2)]
    sheet = _sheet(test_digits, picks, [30, 30, 70, 30])
    draw = ImageDraw.Draw(sheet)
    x = sheet.width // 2 + 60  # between the third and fourth digits: 555-12
    draw.line((x - 10, 88, x + 10, 88), fill=0, width=6)
    draw.ellipse((20, 20, 23, 23), fill=0)
    path = tmp_path / "phone.png"
    sheet.save(path)
    assert len(segment(path).readings) == 5


def test_a_broken_stroke_stays_one_digit(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    picks = [_first(test_digits, d) for d in (4, 7, 1)]
    sheet = _sheet(test_digits, picks, [30, 30])
    # A gap across the middle of the first digit, as a pen that skipped.
    ImageDraw.Draw(sheet).rectangle((0, 86, 40 + 60, 90), fill=255)
    path = tmp_path / "broken.png"
    sheet.save(path)
    assert len(segment(path).readings) == 3


def _strokes(lines: list[tuple[int, ...]], dots: Sequence[tuple[int, int]] = ()) -> Any:
    """Dark polylines 6 px wide (and dots of radius 3) on white paper: shapes drawn by hand."""
    sheet = Image.new("L", (420, 200), 255)
    draw = ImageDraw.Draw(sheet)
    for line in lines:
        draw.line(line, fill=0, width=6)
    for x, y in dots:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=0)
    return sheet


ONE = (330, 40, 330, 160)  # a 1 to the right of the shapes under test, as tall as they are
SEVEN = (230, 40, 290, 40, 250, 160)


def test_a_detached_bar_stays_with_its_digit(tmp_path: Path) -> None:
    # A 5 whose bar was written apart from its stem and runs far to the right: it overlaps
    # the stem-and-bowl's span little, but touches its box, and the two are no wider than a digit.
    five = [(60, 55, 60, 100), (60, 100, 90, 95, 105, 125, 90, 155, 55, 155)]
    path = tmp_path / "five.png"
    _strokes([*five, (98, 42, 148, 38), ONE]).save(path)
    first, second = segment(path).readings
    _, top, right, _ = first[0][0].box
    assert top < 45 and right > 140  # the bar (y 38-42, x 98-148) is in the 5's box
    assert len(second) == 1


def test_a_long_bar_on_top_stays_with_its_digit_a_dash_does_not(tmp_path: Path) -> None:
    # The bar runs on to x 172: the 5 is ~1.15 times as wide as tall, as MNIST's widest are.
    five = [(60, 55, 60, 100), (60, 100, 90, 95, 105, 125, 90, 155, 55, 155)]
    path = tmp_path / "five.png"
    _strokes([*five, (98, 42, 172, 38), (360, 40, 360, 160)]).save(path)
    first, second = segment(path).readings
    assert first[0][0].box[2] > 165 and len(second) == 1
    # A dash as long beside the 5's middle is not its bar: a dash, not a digit.
    _strokes([*five, (112, 100, 172, 100), (360, 40, 360, 160)]).save(path)
    first, second = segment(path).readings
    assert first[0][0].box[2] < 115 and len(second) == 1


def test_a_dotted_stroke_stays_with_its_digit(tmp_path: Path) -> None:
    # A 0 whose left half the pen only dotted: each dot has ~3 % of the 7's ink.
    right = [(100, 40, 130, 60, 140, 100, 130, 140, 100, 160)]
    dots = [(88, 42), (74, 54), (64, 76), (60, 100), (64, 124), (74, 146), (88, 158)]
    path = tmp_path / "zero.png"
    _strokes([*right, SEVEN], dots).save(path)
    row = segment(path)
    assert len(row.readings) == 2
    zero, seven = row.readings[0][0][0], row.readings[1][0][0]
    assert zero.box[2] <= seven.box[0]
    # The dots are in: the 0 spans from the leftmost dot to its right half (~85 of 120 px).
    assert zero.box[2] - zero.box[0] > 0.6 * (zero.box[3] - zero.box[1])
    single = preprocess_image(_strokes(right, dots))
    assert single.box[2] - single.box[0] > 0.6 * (single.box[3] - single.box[1])


def test_a_margin_line_along_a_digit_is_removed(tmp_path: Path) -> None:
    # A tilted margin line (2 px) runs from the top of the paper to the bottom, along the first
    # 1's stroke: the 1 must not make the line a long stroke, kept and joined to the 1 (ink at
    # the frame's edge is left out of the row).
    page = Image.new("L", (420, 360), 255)
    page.paste(_strokes([(62, 40, 66, 160), SEVEN, ONE]), (0, 80))
    ImageDraw.Draw(page).line((58, 0, 72, 359), fill=110, width=2)
    path = tmp_path / "margin.png"
    page.save(path)
    row = segment(path)
    assert len(row.readings) == 3
    first = row.readings[0][0][0].box
    assert first[1] > 100 and first[3] < 260  # the 1 alone, not the line's length


def test_a_thin_line_between_the_coarse_angles_is_erased() -> None:
    # 2.25 degrees, halfway between the coarse vote's steps: there a 1 px line's votes spread
    # over 2-3 bins and fall under the threshold; the finer angles find it.
    page = Image.new("1", (420, 360), 0)
    ImageDraw.Draw(page).line((100, 0, 100 + 360 * math.tan(math.radians(2.25)), 359), fill=1)
    assert not remove_lines(np.asarray(page).astype(bool)).any()


def test_a_page_edge_is_not_erased_into_strokes(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    # The tilted edge of the page, a table beyond it: it reaches across the frame like a ruled
    # line but is the edge of a dark region, not thin. Erased as a line, its remains were
    # read as 1s (2148 read 21481).
    images, labels = test_digits
    picks = [int(np.flatnonzero(labels == d)[27]) for d in (2, 1, 4, 8)]
    rng = np.random.default_rng(27)
    photo = photogen.make_photo([images[i] for i in picks], [2, 1, 4, 8], "border", rng)
    path = tmp_path / f"edge{photo.suffix}"
    path.write_bytes(photo.data)
    assert len(segment(path).readings) == 4


def test_a_long_stroke_is_not_a_ruled_line() -> None:
    # A 1 written down nearly the whole page reaches across the frame like a margin line, but
    # is wider than one all along (5 px, as wide as the band a line is erased in): it stays.
    page = Image.new("L", (300, 360), 255)
    ImageDraw.Draw(page).line((150, 15, 150, 345), fill=0, width=5)
    one = preprocess_image(page)
    assert one.box[3] - one.box[1] > 300


def test_a_fine_pen_1_down_the_page_is_not_a_ruled_line() -> None:
    # As thin as a ruled line and nearly as long, but it stops short of the frame at both ends
    # (a paper line runs off the frame at one end at least): it stays, the only ink there is.
    page = Image.new("L", (300, 360), 235)
    ImageDraw.Draw(page).line((150, 15, 152, 345), fill=40, width=2)
    one = preprocess_image(page)
    assert one.box[3] - one.box[1] > 300


def test_ruled_lines_that_stop_short_of_the_frame_are_still_erased() -> None:
    # A notebook page with the table showing on both sides: its lines stop short of both
    # ends of the frame, like the fine-pen 1 above, but there are several and a digit besides.
    page = Image.new("RGB", (480, 360), (90, 70, 50))
    draw = ImageDraw.Draw(page)
    draw.rectangle((38, 0, 441, 359), fill=(235, 235, 228))
    for y in range(20, 360, 30):
        draw.line((38, y, 441, y), fill=(120, 150, 220), width=2)
    draw.line([(220, 120), (260, 120), (235, 240)], fill=(20, 20, 30), width=9)  # a 7
    assert np.allclose(preprocess_image(page).box, (216, 116, 264, 244), atol=8)


def test_a_wide_digit_is_not_cut_into_short_pieces(tmp_path: Path) -> None:
    # A stem with a loop at its foot (a 6, a b): 0.8 heights wide, but a cut would leave the
    # loop, half as tall as the row. Two tall strokes joined at the foot may be cut (11).
    six = [(40, 40, 40, 160), (40, 160, 110, 160, 110, 100, 40, 100)]
    path = tmp_path / "six.png"
    _strokes([*six, ONE]).save(path)
    assert [len(o) for o in segment(path).readings[0]] == [1]
    ones = [(40, 40, 40, 160), (40, 160, 100, 160), (100, 40, 100, 160)]
    path = tmp_path / "ones.png"
    _strokes([*ones, ONE]).save(path)
    assert 2 in [len(o) for o in segment(path).readings[0]]


def test_specks_beside_a_1_are_not_cut_off_as_a_digit(tmp_path: Path) -> None:
    # MNIST digits carry specks: three beside a slanted 1 ("1:") spread as tall as a digit and
    # make the group 0.5 heights wide, but a piece of specks alone is not a digit.
    path = tmp_path / "one.png"
    _strokes([(60, 40, 30, 160), ONE], [(75, 60), (80, 100), (85, 140)]).save(path)
    first = segment(path).readings[0]
    assert first[0][0].box[2] >= 85  # the specks are in the 1's group
    assert [len(o) for o in first] == [1]


def test_three_touching_digits_can_be_read_cut_in_three(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    # 1.6 heights wide: room for two digits of ~0.7 and a bit; a thin 1 at each end.
    picks = [_first(test_digits, d) for d in (1, 2, 1)]
    path = tmp_path / "touching.png"
    _sheet(test_digits, picks, [-6, -6]).save(path)
    (options,) = segment(path).readings
    assert 3 in [len(o) for o in options]


def test_touching_digits_can_be_read_cut_apart(
    test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    picks = [_first(test_digits, d) for d in (3, 8)]
    path = tmp_path / "touching.png"
    _sheet(test_digits, picks, [-6]).save(path)
    (options,) = segment(path).readings
    assert 2 in [len(o) for o in options]  # too wide for one digit: cut in two


def test_no_digit_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("RGB", (300, 120), (240, 240, 235)).save(path)
    with pytest.raises(ImageError, match="no digit"):
        segment(path)


# --- reading ------------------------------------------------------------------------------


def test_a_shape_unlike_any_digit_scores_lower() -> None:
    # Logits shifted down by a constant: the same softmax, but the model sees less of a digit.
    whole, other, piece = (
        Preprocessed(np.zeros((28, 28), np.float32), (0, 0, 1, 1)) for _ in "abc"
    )
    row = Row([[[whole]], [[other], [piece, piece]]])
    logits = torch.tensor([[4.0, 1.0, *[0.0] * 8]]) - torch.tensor([[0.0], [3.0], [1.0]])
    top = float(logits[0].log_softmax(0).max())
    candidates = [whole, other, piece]
    scores = _scores(logits, row, candidates)
    assert scores == pytest.approx([top, top - ENERGY_WEIGHT * 3, top - ENERGY_WEIGHT * 1])


def test_a_candidate_wider_than_tall_scores_lower() -> None:
    # Two touching digits read whole are wider than the row is tall; one digit rarely is.
    narrow, square, wide = (
        Preprocessed(np.zeros((28, 28), np.float32), (0, 0, w, 40)) for w in (30, 40, 60)
    )
    row = Row([[[narrow]], [[square]], [[wide]]], height=40)
    logits = torch.tensor([[4.0, 1.0, *[0.0] * 8]]).repeat(3, 1)
    top = float(logits[0].log_softmax(0).max())
    candidates = [narrow, square, wide]
    scores = _scores(logits, row, candidates)
    assert scores == pytest.approx([top, top, top - WIDE_COST * 0.5])


@pytest.mark.slow
def test_numbers_are_read(digit_model: DigitNet, numbers: dict[Path, str]) -> None:
    # The session's small model (~98 % per digit): ~90 % of 4-digit numbers entirely right.
    reads = {path: read_number(digit_model, path) for path in numbers}
    right = [reads[p].number == label for p, label in numbers.items()]
    assert sum(right) >= 12, {p.name: (r.number, numbers[p]) for p, r in reads.items()}
    for read in reads.values():
        assert read.number is not None and len(read.digits) == len(read.number)
        assert len(read.boxes) == len(read.number)
        assert read.probability == pytest.approx(np.prod([top[0][1] for top in read.digits]))


@pytest.mark.slow
def test_touching_digits_are_read(
    digit_model: DigitNet, test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    labels = (3, 8, 4, 7, 2, 0)
    picks = [_first(test_digits, d) for d in labels]
    path = tmp_path / "touching.png"
    _sheet(test_digits, picks, [-5, 30, -5, 30, -5]).save(path)
    assert read_number(digit_model, path).number == "".join(map(str, labels))


@pytest.mark.slow
def test_predict_numbers_streams_errors_and_views(
    digit_model: DigitNet, numbers: dict[Path, str], tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 100), 255).save(blank)
    paths = [*list(numbers)[:2], blank]
    out = tmp_path / "views"
    results = list(predict_numbers(digit_model, paths, top_k=3, save_dir=out))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert results[2].number is None and "no digit" in (results[2].error or "")
    for read, path in zip(results[:2], paths[:2], strict=True):
        assert all(len(top) == 3 for top in read.digits)
        with Image.open(out / f"{path.stem}.png") as view:
            assert view.size == (28 * len(read.number or ""), 28)
        assert (out / f"{path.stem}.steps.png").is_file()


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def year(test_digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> Path:
    path = tmp_path / "year.jpg"
    picks = [_first(test_digits, d, skip=1) for d in (1, 9, 8, 4)]
    _sheet(test_digits, picks, [30, 30, 30]).convert("RGB").save(path, quality=90)
    return path


@pytest.mark.slow
def test_cli_prints_the_number_and_each_digits_probability(
    digit_model_run: dict, year: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--multi", "-m", str(digit_model_run["path"]), str(year)]) == 0
    line = capsys.readouterr().out.strip()
    path, rest = line.split(": ", 1)
    assert path == str(year)
    number, *digits = rest.split("  ")
    assert number == "1984"
    assert digits[0].startswith("(p=")
    assert [d.split(" ")[0] for d in digits[1:]] == ["1", "9", "8", "4"]


@pytest.mark.slow
def test_cli_json(digit_model_run: dict, year: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(digit_model_run["path"])
    assert main(["predict", "--multi", "--json", "-k", "2", "-m", model, str(year)]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["number"] == "1984" and result["error"] is None
    assert [len(top) for top in result["digits"]] == [2, 2, 2, 2]
    assert len(result["boxes"]) == 4


@pytest.mark.slow
def test_cli_errors(
    digit_model_run: dict, year: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 100), 255).save(blank)
    model = str(digit_model_run["path"])
    assert main(["predict", "--multi", "-m", model, str(year), str(blank)]) == 1
    captured = capsys.readouterr()
    assert "1984" in captured.out
    assert captured.err.startswith("mnistcnn: error: no digit found")
    assert main(["predict", "--multi", "-m", "model.onnx", str(year)]) == 1
    assert "--multi reads numbers with a .pth model" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_subprocess(digit_model_run: dict, year: Path) -> None:
    model = str(digit_model_run["path"])
    done = subprocess.run(
        [sys.executable, "-m", "mnistcnn", "predict", "--multi", "-m", model, str(year)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{year}: 1984  (p=")
