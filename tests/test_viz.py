"""Run folders, TensorBoard events, report PNGs and HTML, compare, eval/predict pictures.

Real runs on real MNIST: the session's tiny run (which now writes a run folder) and the digit
model; a few one-epoch runs on 512 images for the run-folder edge cases.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mnistcnn.cli import main
from mnistcnn.config.build import from_dict, read_yaml_file
from mnistcnn.config.schema import Config
from mnistcnn.errors import ConfigError
from mnistcnn.files import RUN_CONFIG as CONFIG
from mnistcnn.files import RUN_METRICS as METRICS
from mnistcnn.files import RUN_MODEL as MODEL
from mnistcnn.files import RUN_STEPS as STEPS
from mnistcnn.report.figures import SIZES
from mnistcnn.report.page import FIGURES, write_report
from mnistcnn.report.runs import compare_runs, find_run, format_comparison
from mnistcnn.train import loops
from mnistcnn.train.fitting import fit

pytest.importorskip("matplotlib", reason="the viz extra is not installed: pip install '.[dev]'")

QUICK = ("data.subset=512", "data.val_size=256", "train.epochs=2", "train.log_every=2")


def assert_png(path: Path, size: tuple[int, int]) -> None:
    """A valid PNG of exactly `size` pixels that is not one flat colour."""
    assert path.is_file() and path.stat().st_size > 5000, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == size, (path.name, img.size)
        img.verify()
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.std() > 5, f"{path.name} is nearly blank"


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def quick_fit(
    make_cfg: Callable[..., Config],
    small_splits: Callable[..., Any],
    tmp_path: Path,
    logged: list[str],
) -> Callable[..., tuple[dict[str, Any], list[str]]]:
    """Two-epoch runs on 512 images (4 steps an epoch) with run folders in tmp_path/runs."""

    def run(*sets: str, **kwargs: Any) -> tuple[dict[str, Any], list[str]]:
        cfg = make_cfg(*QUICK, f"train.run_dir={tmp_path / 'runs'}", *sets)
        return fit(cfg, splits=small_splits(cfg, 256), progress=False, **kwargs), logged

    return run


# --- the run folder and its TensorBoard events ---------------------------------------------


def test_train_writes_a_run_folder(tiny_run: dict[str, Any]) -> None:
    run = Path(tiny_run["run_dir"])
    assert run.is_dir() and run.name.startswith("tiny-")
    assert from_dict(read_yaml_file(run / CONFIG)) == tiny_run["cfg"]
    with open(run / METRICS) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert (run / MODEL).read_bytes() == Path(tiny_run["path"]).read_bytes()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    # train.output keeps its own files beside the model (issue 2)
    assert Path(tiny_run["path"]).with_suffix(".metrics.csv").is_file()
    assert any(line.startswith(f"run folder {run}") for line in tiny_run["logs"])


def test_tensorboard_events_hold_scalars_graph_and_images(tiny_run: dict[str, Any]) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    events = event_accumulator.EventAccumulator(str(tiny_run["run_dir"]), size_guidance={})
    events.Reload()
    tags = events.Tags()
    for key in ("loss", "accuracy", "lr", "grad_norm"):
        assert f"step/{key}" in tags["scalars"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "grad_norm"):
        assert f"epoch/{key}" in tags["scalars"]
        assert [e.step for e in events.Scalars(f"epoch/{key}")] == [1, 2]
    steps = [e.step for e in events.Scalars("step/loss")]
    assert steps == sorted(steps) and len(steps) >= 2
    assert all(e.value > 0 for e in events.Scalars("step/grad_norm"))
    assert {"test/confusion_matrix", "test/misclassified"} <= set(tags["images"])
    assert tags["graph"], "no model graph"
    assert "config/text_summary" in tags["tensors"]


def test_step_log_matches_the_epoch_metrics(
    quick_fit: Callable[..., tuple[dict[str, Any], list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the CSVs alone: quicker
    result, _ = quick_fit()
    run = Path(result["run_dir"])
    with open(run / STEPS) as f:
        steps = list(csv.DictReader(f))
    # 512 images / 128 per batch = 4 steps an epoch, logged every 2
    assert [int(r["step"]) for r in steps] == [2, 4, 6, 8]
    assert [float(r["epoch_float"]) for r in steps] == [0.5, 1.0, 1.5, 2.0]
    assert all(float(r["grad_norm"]) > 0 and 0 <= float(r["accuracy"]) <= 1 for r in steps)
    with open(run / METRICS) as f:
        rows = list(csv.DictReader(f))
    # the epoch's mean loss is the mean of its two logged windows
    first = (float(steps[0]["loss"]) + float(steps[1]["loss"])) / 2
    assert float(rows[0]["train_loss"]) == pytest.approx(first, abs=1e-5)


def test_without_tensorboard_the_run_completes_and_says_how_to_enable_it(
    quick_fit: Callable[..., tuple[dict[str, Any], list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    result, logs = quick_fit("train.epochs=1")
    run = Path(result["run_dir"])
    assert {CONFIG, METRICS, STEPS, MODEL} <= {p.name for p in run.iterdir()}
    assert not list(run.glob("events.out.tfevents.*"))
    assert any("pip install 'mnistcnn[viz]'" in line for line in logs)


def test_run_dir_null_writes_no_run_folder(
    quick_fit: Callable[..., tuple[dict[str, Any], list[str]]], tmp_path: Path
) -> None:
    result, logs = quick_fit("train.epochs=1", "train.run_dir=null")
    assert result["run_dir"] is None
    assert not (tmp_path / "runs").exists()
    assert Path(result["model"]).is_file()
    assert not any(line.startswith("run folder") for line in logs)


def test_run_names_are_unique_and_validated(
    quick_fit: Callable[..., tuple[dict[str, Any], list[str]]],
    make_cfg: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # folders alone: quicker
    first, _ = quick_fit("train.epochs=1", "train.run_name=same")
    second, _ = quick_fit("train.epochs=1", "train.run_name=same", overwrite=True)
    assert first["run_dir"] != second["run_dir"]
    assert all(Path(r["run_dir"]).name.startswith("same-") for r in (first, second))
    for bad in ("a/b", "..", "x y"):
        with pytest.raises(ConfigError, match=r"train\.run_name"):
            make_cfg(f"train.run_name={bad!r}")


def test_resume_continues_in_the_same_run_folder(
    quick_fit: Callable[..., tuple[dict[str, Any], list[str]]],
    make_cfg: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from mnistcnn.checkpoint import load_training_state

    real = loops.train_one_epoch

    def stop_in_epoch_2(*args: Any, **kwargs: Any) -> dict[str, float]:
        if kwargs["epoch"] == 2:
            kwargs["on_log"](2, {"loss": 9.0, "accuracy": 0.0, "lr": 0.0, "grad_norm": 1.0})
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loops, "train_one_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        quick_fit()
    monkeypatch.setattr(loops, "train_one_epoch", real)
    (run,) = (tmp_path / "runs").iterdir()
    state = load_training_state(tmp_path / "model.ckpt")
    assert state["run_dir"] == str(run)
    result, _ = quick_fit(resume=state)
    assert result["run_dir"] == str(run)
    with open(run / STEPS) as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [2, 4, 6, 8]  # the interrupted epoch's logged step is not kept twice
    with open(run / METRICS) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]


# --- report --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_report(
    tiny_run: dict[str, Any], data_dir: Path, mnist_test: Any, tmp_path_factory: Any
) -> dict:
    """The tiny run's report, re-scored on the first 1,000 test digits (quicker than 10,000)."""
    from mnistcnn import data

    def first_1000(*args: Any, **kwargs: Any) -> Any:
        return data.Split(mnist_test.images[:1000], mnist_test.labels[:1000])

    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_mnist", first_1000)
        return write_report(tiny_run["run_dir"], out, data_dir)


def test_report_renders_every_figure(tiny_report: dict[str, Path]) -> None:
    assert set(tiny_report) == {*FIGURES, "html"}
    for name in FIGURES:
        assert_png(tiny_report[name], SIZES[name])


def test_report_html_embeds_every_figure_with_config_and_metrics(
    tiny_report: dict[str, Path], tiny_run: dict[str, Any]
) -> None:
    page = tiny_report["html"].read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert 'src="http' not in page and "<script" not in page  # static, nothing to fetch
    assert f"{100 * tiny_run['test_accuracy']:.2f} %" in page
    assert "label_smoothing" in page and "Final metrics" in page


@pytest.mark.slow
def test_report_from_a_model_file(
    tiny_run: dict[str, Any], data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = find_run(tiny_run["path"])  # a .pth whose .yaml and .metrics.csv lie beside it
    assert run.report_dir == Path(tiny_run["path"]).with_name("tiny-report")
    code, out, err = cli(capsys, "report", tiny_run["path"], "-o", tmp_path, "--data-dir", data_dir)
    assert code == 0, err
    assert out.strip() == f"wrote {len(FIGURES)} pictures and {tmp_path / 'report.html'}"
    assert_png(tmp_path / "confusion.png", SIZES["confusion"])


def test_report_of_a_run_that_logged_no_step(
    quick_fit: Callable[..., tuple[dict[str, Any], list[str]]],
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    result, _ = quick_fit("train.log_every=100")  # 8 steps: none logged, steps.csv bare
    run = Path(result["run_dir"])
    with open(run / STEPS) as f:
        assert list(csv.DictReader(f)) == []
    code, _, err = cli(capsys, "report", run, "-o", tmp_path / "report", "--data-dir", data_dir)
    assert code == 0, err
    for name in ("curves", "lr"):
        assert_png(tmp_path / "report" / f"{name}.png", SIZES[name])


def test_report_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "report", tmp_path / "nope")
    assert (code, err) == (1, f"mnistcnn: error: run not found: {tmp_path / 'nope'}\n")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / CONFIG).write_text("{}")
    code, _, err = cli(capsys, "report", tmp_path / "half")
    assert code == 1 and "not a complete run: model.pth, metrics.csv missing" in err
    assert len(err.splitlines()) == 1


# --- compare, eval --save-confusion, predict --explain ---------------------------------------


def test_compare_table_and_overlay(
    tiny_run: dict[str, Any],
    digit_model_run: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    plot = tmp_path / "cmp.png"
    table = compare_runs([tiny_run["run_dir"], digit_model_run["path"]], plot)
    assert [row["run"] for row in table] == [Path(tiny_run["run_dir"]).name, "digits"]
    assert table[1]["model.name"] == "baseline" and table[0]["model.name"] == "cnn"
    assert "train.output" not in table[0] and "optim.lr" in table[0]
    assert table[0]["test_accuracy"] == pytest.approx(tiny_run["test_accuracy"])
    assert table[1]["best_val_accuracy"] == pytest.approx(digit_model_run["val_accuracy"])
    assert_png(plot, SIZES["compare"])
    lines = format_comparison(table).splitlines()
    assert lines[0].split() == ["run", Path(tiny_run["run_dir"]).name, "digits"]
    assert lines[1].split() == ["data.subset", "8000", "30000"]
    assert lines[-3].startswith("best val acc") and lines[-1].startswith("time")

    code, out, err = cli(capsys, "compare", tiny_run["run_dir"], tiny_run["path"], "--plot", plot)
    assert code == 0 and err == f"saved {plot}\n"
    # the same recipe: no config rows
    assert [line.split()[0] for line in out.splitlines()] == [
        "run",
        "params",
        "best",
        "test",
        "time",
    ]
    code, out, _ = cli(capsys, "compare", tiny_run["run_dir"], "--plot", plot, "--json")
    assert code == 0 and json.loads(out)[0]["params"] == table[0]["params"]


def test_pictures_without_matplotlib_are_a_one_line_error(
    tiny_run: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnistcnn

    for name in [m for m in sys.modules if m.startswith("mnistcnn.report")]:  # import afresh
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(mnistcnn, "report", raising=False)
    for name in ("matplotlib", "matplotlib.backends.backend_agg", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    code, out, err = cli(capsys, "compare", tiny_run["run_dir"])
    assert (code, out) == (1, "")
    assert err == "mnistcnn: error: pictures need matplotlib: pip install 'mnistcnn[viz]'\n"


def test_eval_save_confusion(
    tiny_run: dict[str, Any],
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    small_data: Callable[..., None],
) -> None:
    small_data(500)
    png = tmp_path / "cm.png"
    code, out, err = cli(
        capsys, "eval", tiny_run["path"], "--data-dir", data_dir, "--save-confusion", png
    )
    assert code == 0 and "accuracy:" in out and err == f"saved {png}\n"
    assert_png(png, SIZES["confusion"])


def test_predict_explain(
    digit_model_run: dict[str, Any],
    mnist_test: Any,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from mnistcnn.checkpoint import load_model
    from mnistcnn.predict.classify import occlusion

    seven = mnist_test.images[0].numpy()  # the test set's first digit is a 7
    Image.fromarray(255 - seven).resize((84, 84)).save(tmp_path / "seven.png")
    views = tmp_path / "views"
    args = ["-m", digit_model_run["path"], "--save-preprocessed", views, "--explain"]
    code, out, err = cli(capsys, "predict", tmp_path / "seven.png", *args)
    assert code == 0 and out.startswith(f"{tmp_path / 'seven.png'}: 7"), err
    assert (views / "seven.png").is_file()  # the preprocessed view, and beside it:
    assert_png(views / "seven.explain.png", SIZES["explain"])
    # the map lies on the ink: blanking the 7's strokes costs far more than blanking paper
    heat, label, _ = occlusion(load_model(digit_model_run["path"]), seven / 255.0)
    ink = seven > 128
    assert label == 7 and heat[ink].mean() > 5 * abs(heat[~ink].mean())

    code, _, err = cli(capsys, "predict", tmp_path / "seven.png", "--explain")
    assert code == 1 and "--explain needs --save-preprocessed" in err


@pytest.mark.slow
def test_predict_and_start_up_import_no_plotting(
    digit_model_run: dict[str, Any], tmp_path: Path
) -> None:
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    code = (
        "import sys; from mnistcnn.cli import main; "
        f"main(['predict', {str(tmp_path / 'blank.png')!r}, '-m', "
        f"{str(digit_model_run['path'])!r}]); "
        "bad = {'matplotlib', 'tensorboard', 'torchvision', 'mnistcnn.data'} & set(sys.modules); "
        "print(sorted(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr


def test_figures_draw_without_a_display() -> None:
    from mnistcnn.report import figures

    rgb = figures.to_rgb(figures.confusion(np.eye(10, dtype=int) * 100))
    assert rgb.shape == (SIZES["confusion"][1], SIZES["confusion"][0], 3)
    assert rgb.dtype == np.uint8 and torch.from_numpy(rgb).float().std() > 0
