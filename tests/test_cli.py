"""The command line: `main([...])` for every command and exit code, and real subprocesses."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

from mnistcnn import __version__
from mnistcnn.checkpoint import load_model
from mnistcnn.cli import main
from mnistcnn.cli.parser import build_parser
from mnistcnn.config.build import dump, load_config
from mnistcnn.config.schema import Config
from mnistcnn.train import loops

QUICK = ["--set", "data.subset=512", "--set", "data.val_size=256", "--set", "train.epochs=1"]
NO_RUN_DIR = ["--set", "train.run_dir=null"]  # tests never write runs/ into the repository
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *parts: str) -> None:
    """`mnistcnn: error: <what> (<where>)` as the only line on stderr, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mnistcnn: error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def run(*args: str | Path, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m mnistcnn ARGS` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "mnistcnn", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# --- help, version, usage errors -----------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for command in ("train", "eval", "predict", "config"):
        assert command in out


@pytest.mark.parametrize("command", [["train"], ["eval"], ["predict"], ["config", "show"]])
def test_help_of_each_command(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0 and out.startswith("usage: mnistcnn " + " ".join(command))


def test_every_argument_has_help() -> None:
    """Each flag and positional of each command says what it does in its --help."""

    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [
        f"{parser.prog} {action.dest}"
        for parser in parsers(build_parser())
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert (code, out.strip()) == (0, f"mnistcnn {__version__}")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["fly"],
        ["train", "--epochs", "3"],
        ["train", "--set"],
        ["calibrate"],
        ["eval", "m.pth", "--batch-size", "many"],
        ["predict"],
        ["predict", "x.png", "--top-k", "0"],
        ["predict", "x.png", "--top-k", "11"],
        ["config"],
        ["config", "edit"],
    ],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert "usage: mnistcnn" in err and "error:" in err
    assert out == ""


# --- config show ---------------------------------------------------------------------------


def test_config_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "config", "show")
    assert (code, err) == (0, "")
    assert out == dump(Config())


def test_config_show_file_sets_and_data_dir(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        capsys, "config", "show", "-c", TINY, "--set", "train.epochs=7", "--data-dir", "/a b/c"
    )
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["train"]["epochs"] == 7
    assert shown["data"]["root"] == "/a b/c"
    assert shown["model"]["channels"] == yaml.safe_load(TINY.read_text())["model"]["channels"]
    assert out == dump(load_config(TINY, ["train.epochs=7", 'data.root="/a b/c"']))


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--set", "trian.epochs=1"], ["unknown key 'trian'", "valid keys:"]),
        (["--set", "train.epochs=zero"], ["train.epochs"]),
        (["--set", "optim.name=Adamm"], ["Adamm", "valid:", "AdamW"]),
        (["--set", "train.epochs"], ["--set expects"]),
        (["-c", "does/not/exist.yaml"], ["config file not found", "exist.yaml"]),
    ],
)
def test_config_errors_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], parts: list[str]
) -> None:
    code, out, err = cli(capsys, "config", "show", *args)
    assert (code, out) == (1, "")
    assert_one_error_line(err, *parts)


def test_yaml_error_names_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n   seed: 1\n")
    code, _, err = cli(capsys, "config", "show", "-c", path)
    assert code == 1
    assert_one_error_line(err, "invalid YAML", f"{path}:")


# --- train ---------------------------------------------------------------------------------


@pytest.fixture
def train_args(data_dir: Path, tmp_path: Path) -> list[str | Path]:
    out = tmp_path / "runs" / "m.pth"
    return [
        "train",
        "-c",
        TINY,
        *QUICK,
        *NO_RUN_DIR,
        "--data-dir",
        data_dir,
        "-o",
        out,
        "--device",
        "cpu",
    ]


def test_train_text(
    capsys: pytest.CaptureFixture[str], train_args: list[str | Path], small_data: Callable
) -> None:
    small_data(256)
    code, out, err = cli(capsys, *train_args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("model cnn: ")
    assert any(line.startswith("epoch   1/1") for line in lines)
    assert lines[-3].startswith("test accuracy ") and "(last epoch 1)" in lines[-3]
    assert lines[-2].startswith("temperature ") and "validation ECE" in lines[-2]
    output = Path(train_args[-3])
    assert lines[-1] == f"saved {output}"
    assert load_model(output).meta["epoch"] == 1
    assert output.with_suffix(".yaml").is_file()


def test_train_json(
    capsys: pytest.CaptureFixture[str], train_args: list[str | Path], small_data: Callable
) -> None:
    small_data(256)
    code, out, err = cli(capsys, *train_args, "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)  # stdout is only the JSON document
    assert result["model"] == str(train_args[-3])
    assert 0 <= result["test_accuracy"] <= 1 and result["epochs"] == 1
    assert result["device"] == "cpu"
    assert result["temperature"] > 0 and result["tta_temperature"] > 0
    assert "epoch   1/1" in err  # the log goes to stderr


def test_train_refuses_to_overwrite(
    capsys: pytest.CaptureFixture[str], train_args: list[str | Path], small_data: Callable
) -> None:
    small_data(256)
    output = Path(train_args[-3])
    output.parent.mkdir(parents=True)
    output.write_bytes(b"precious")
    code, out, err = cli(capsys, *train_args)
    assert (code, out) == (1, "")
    assert_one_error_line(err, "already exists", "--overwrite", str(output))
    assert output.read_bytes() == b"precious"
    code, _, _ = cli(capsys, *train_args, "--overwrite")
    assert code == 0 and load_model(output)


@NO_CUDA
def test_train_on_missing_cuda(capsys: pytest.CaptureFixture[str], train_args: list) -> None:
    code, _, err = cli(capsys, *train_args[:-2], "--device", "cuda")
    assert code == 1
    assert_one_error_line(err, "train.device is cuda but CUDA is not available")


def test_train_with_missing_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(
        capsys,
        "train",
        "--data-dir",
        tmp_path / "no-mnist",
        "--set",
        "data.download=false",
        *NO_RUN_DIR,
        "-o",
        tmp_path / "m.pth",
    )
    assert code == 1
    assert_one_error_line(err, "MNIST not found", str(tmp_path / "no-mnist" / "MNIST" / "raw"))


def test_train_nan_exits_1(
    capsys: pytest.CaptureFixture[str], train_args: list[str | Path], small_data: Callable
) -> None:
    small_data(256)
    diverge = ["model={name: baseline, channels: [4, 8], hidden: 16}", "optim.name=SGD"]
    sets = [x for s in [*diverge, "optim.lr=1e6"] for x in ("--set", s)]
    code, _, err = cli(capsys, *train_args, *sets)
    assert code == 1
    assert_one_error_line(err, "at epoch 1, batch", "optim.lr")


def test_train_ctrl_c_in_the_first_epoch_exits_130(
    capsys: pytest.CaptureFixture[str],
    train_args: list[str | Path],
    small_data: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_data(256)

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, float]:
        raise KeyboardInterrupt

    monkeypatch.setattr(loops, "train_one_epoch", interrupted)
    code, out, err = cli(capsys, *train_args)
    assert code == 130
    assert "nothing saved" in out
    assert err.strip() == "mnistcnn: interrupted"


# --- eval ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_text(capsys: pytest.CaptureFixture[str], tiny_run: dict, data_dir: Path) -> None:
    code, out, err = cli(capsys, "eval", tiny_run["path"], "--data-dir", data_dir, "--no-download")
    assert (code, err) == (0, "")
    assert "test images: 10000" in out
    assert f"accuracy: {100 * tiny_run['test_accuracy']:.2f} %" in out
    assert "digit  precision  recall" in out and "confusion" in out
    assert "ECE:" in out and "after temperature scaling" in out
    assert f"(the model file says {100 * tiny_run['test_accuracy']:.2f} %" in out
    # report (with the stored accuracy), confusion matrix, a blank line, four calibration lines
    assert len(out.splitlines()) == 6 + 10 + 2 + 1 + 10 + 1 + 4


@pytest.mark.slow
def test_eval_json(capsys: pytest.CaptureFixture[str], tiny_run: dict, data_dir: Path) -> None:
    code, out, _ = cli(
        capsys, "eval", tiny_run["path"], "--data-dir", data_dir, "--json", "--batch-size", "3000"
    )
    assert code == 0
    report = json.loads(out)
    assert report["images"] == 10000
    assert report["accuracy"] == pytest.approx(tiny_run["test_accuracy"], abs=1e-6)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 10000
    assert np.trace(confusion) == round(report["accuracy"] * 10000)
    assert [c["support"] for c in report["per_class"]] == confusion.sum(1).tolist()
    assert all(0.5 < c["f1"] <= 1 for c in report["per_class"])


def test_eval_missing_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = cli(capsys, "eval", tmp_path / "none.pth", "--no-download")
    assert (code, out) == (1, "")
    assert_one_error_line(err, "model file not found", "none.pth")


def test_eval_bad_model_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    path.write_bytes(b"PK\x03\x04 not really")
    code, _, err = cli(capsys, "eval", path, "--no-download")
    assert code == 1
    assert_one_error_line(err, str(path))


@pytest.mark.slow
def test_eval_missing_data(
    capsys: pytest.CaptureFixture[str], tiny_run: dict, tmp_path: Path
) -> None:
    code, _, err = cli(
        capsys, "eval", tiny_run["path"], "--data-dir", tmp_path / "x", "--no-download"
    )
    assert code == 1
    assert_one_error_line(err, "MNIST not found", str(tmp_path / "x" / "MNIST" / "raw"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [pytest.param("cuda", marks=NO_CUDA), "gpu", "cpu:x"],
)
def test_eval_unusable_device_exits_1(
    capsys: pytest.CaptureFixture[str], tiny_run: dict, data_dir: Path, device: str
) -> None:
    code, _, err = cli(capsys, "eval", tiny_run["path"], "--data-dir", data_dir, "--device", device)
    assert code == 1
    assert_one_error_line(err, device.split(":")[0])
    assert "train.device" not in err  # eval's option is --device


@pytest.mark.slow
def test_eval_amp_answers_as_float32_within_a_few_images(
    capsys: pytest.CaptureFixture[str], tiny_run: dict, data_dir: Path
) -> None:
    code, out, _ = cli(capsys, "eval", tiny_run["path"], "--data-dir", data_dir, "--json", "--amp")
    assert code == 0
    # bf16 on CPUs where it is faster (float32 elsewhere): a few borderline answers may change.
    assert json.loads(out)["accuracy"] == pytest.approx(tiny_run["test_accuracy"], abs=0.003)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["-5", "many"])
def test_eval_bad_batch_size_is_a_usage_or_user_error(
    capsys: pytest.CaptureFixture[str], tiny_run: dict, data_dir: Path, size: str
) -> None:
    code, _, err = cli(
        capsys, "eval", tiny_run["path"], "--data-dir", data_dir, "--batch-size", size
    )
    assert code in (1, 2)
    assert "Traceback" not in err and "batch" in err


# --- predict -------------------------------------------------------------------------------


@pytest.fixture
def few_digits(digit_images: dict[Path, int], digit_model: Any) -> dict[Path, int]:
    """Six re-drawn digits and the labels the library gives them (the CLI must agree)."""
    from mnistcnn.predict.classify import classifier
    from mnistcnn.predict.files import predict_paths

    paths = list(digit_images)[:6]
    return {Path(p.path): p.label for p in predict_paths(classifier(digit_model), paths)}


@pytest.mark.slow
def test_predict_text(
    capsys: pytest.CaptureFixture[str], digit_model_run: dict, few_digits: dict[Path, int]
) -> None:
    code, out, err = cli(capsys, "predict", *few_digits, "--model", digit_model_run["path"])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == len(few_digits)
    for line, (path, label) in zip(lines, few_digits.items(), strict=True):
        name, rest = line.split(": ", 1)
        assert name == str(path)
        assert rest.startswith(f"{label}  (p=")


@pytest.mark.slow
def test_predict_json_top_k(
    capsys: pytest.CaptureFixture[str], digit_model_run: dict, few_digits: dict[Path, int]
) -> None:
    code, out, _ = cli(
        capsys, "predict", *few_digits, "-m", digit_model_run["path"], "--json", "-k", "3"
    )
    assert code == 0
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(p) for p in few_digits]
    for r, label in zip(results, few_digits.values(), strict=True):
        assert r["error"] is None and r["label"] == label
        assert len(r["top"]) == 3 and r["top"][0] == [r["label"], r["probability"]]


@pytest.mark.slow
def test_predict_top_k_text(
    capsys: pytest.CaptureFixture[str], digit_model_run: dict, few_digits: dict[Path, int]
) -> None:
    path = next(iter(few_digits))
    code, out, _ = cli(capsys, "predict", path, "-m", digit_model_run["path"], "-k", "3")
    assert code == 0
    # "<path>: 7  (p=0.981)  1 (0.012)  2 (0.004)"
    assert len(out.strip().split("  ")) == 4


@pytest.mark.slow
def test_predict_with_bad_files_exits_1_and_still_predicts_the_rest(
    capsys: pytest.CaptureFixture[str],
    digit_model_run: dict,
    few_digits: dict[Path, int],
    tmp_path: Path,
) -> None:
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (50, 50), 255).save(blank)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not a jpeg")
    good = list(few_digits)[:2]
    code, out, err = cli(
        capsys, "predict", good[0], blank, junk, good[1], "-m", digit_model_run["path"]
    )
    assert code == 1
    assert [line.split(":")[0] for line in out.splitlines()] == [str(p) for p in good]
    errors = err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("mnistcnn: error: ") for e in errors)
    assert "no digit" in errors[0] and str(blank) in errors[0]
    assert str(junk) in errors[1]
    assert "Traceback" not in err


@pytest.mark.slow
def test_predict_folder_and_save_preprocessed(
    capsys: pytest.CaptureFixture[str],
    digit_model_run: dict,
    few_digits: dict[Path, int],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in few_digits:
        (folder / path.name).write_bytes(path.read_bytes())
    views = tmp_path / "views"
    code, out, _ = cli(
        capsys, "predict", folder, "-m", digit_model_run["path"], "--save-preprocessed", views
    )
    assert code == 0
    assert len(out.splitlines()) == len(few_digits)
    written = {p.name for p in views.iterdir()}
    assert {f"{p.stem}.png" for p in few_digits} <= written


def test_predict_empty_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_file: Path
) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "predict", tmp_path / "empty", "-m", tiny_model_file)
    assert code == 1
    assert_one_error_line(err, "no image files found", str(tmp_path / "empty"))


def test_predict_missing_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "predict", tmp_path, "-m", tmp_path / "nope.pth")
    assert code == 1
    assert_one_error_line(err, "model file not found")


@pytest.fixture
def tiny_model_file(tmp_path: Path) -> Path:
    """An untrained model file: enough for error paths that never reach the weights."""
    from mnistcnn.checkpoint import save_model
    from mnistcnn.model.nets import build_model

    path = tmp_path / "untrained.pth"
    save_model(build_model("cnn", {"channels": (4,), "convs_per_stage": (1,)}), path)
    return path


# --- real processes ------------------------------------------------------------------------


def test_subprocess_help_and_usage(tmp_path: Path) -> None:
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0 and "predict" in done.stdout and done.stderr == ""
    done = run("train", "--no-such-flag", cwd=tmp_path)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "--no-such-flag" in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_subprocess_config_show(tmp_path: Path) -> None:
    done = run("config", "show", "-c", TINY, "--set", "train.seed=5", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == dump(load_config(TINY, ["train.seed=5"]))
    done = run("config", "show", "--set", "optim.lr=[", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert_one_error_line(done.stderr, "invalid YAML", "--set optim.lr")


@pytest.mark.slow
def test_subprocess_train_eval_predict(
    tmp_path: Path, data_dir: Path, few_digits: dict[Path, int], digit_model_run: dict
) -> None:
    done = run(
        "train",
        "-c",
        TINY,
        *QUICK,
        *NO_RUN_DIR,
        "--data-dir",
        data_dir,
        "-o",
        "m.pth",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "m.pth" and (tmp_path / "m.pth").is_file()
    assert "Traceback" not in done.stderr

    done = run("eval", "m.pth", "--data-dir", data_dir, "--no-download", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)

    # -X importtime lists every module imported: predict must not pay for torchvision.
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "mnistcnn",
            "predict",
            *few_digits,
            "-m",
            digit_model_run["path"],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    labels = [int(line.split(": ")[1].split()[0]) for line in done.stdout.splitlines()]
    assert labels == list(few_digits.values())
    assert "torchvision" not in done.stderr
    assert "mnistcnn.data" not in done.stderr


@pytest.mark.slow
def test_subprocess_calibrate_report_compare(
    tmp_path: Path, data_dir: Path, tiny_run: dict
) -> None:
    model = tmp_path / "tiny.pth"
    for suffix in (".pth", ".yaml", ".metrics.csv"):
        shutil.copy(Path(tiny_run["path"]).with_suffix(suffix), model.with_suffix(suffix))
    done = run("calibrate", model, "--data-dir", data_dir, "--no-download", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("temperature ") and f"saved in {model}" in done.stdout
    done = run("report", model, "--data-dir", data_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    html = tmp_path / "tiny-report" / "report.html"
    assert done.stdout.strip() == f"wrote 6 pictures and {html}" and html.is_file()
    done = run("compare", tiny_run["run_dir"], model, "--plot", "cmp.png", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [row["run"] for row in json.loads(done.stdout)] == [
        Path(tiny_run["run_dir"]).name,
        "tiny",
    ]
    assert done.stderr == "saved cmp.png\n" and (tmp_path / "cmp.png").is_file()


@pytest.mark.slow
def test_subprocess_error_exits_1_without_traceback(tmp_path: Path) -> None:
    done = run("predict", "x.png", "-m", "missing.pth", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert_one_error_line(done.stderr, "model file not found", "missing.pth")


@pytest.mark.slow
def test_ctrl_c_saves_the_best_model_and_exits_130(tmp_path: Path, data_dir: Path) -> None:
    sets = ["--set", "data.subset=1024", "--set", "data.val_size=512", "--set", "train.epochs=50"]
    sets += NO_RUN_DIR
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnistcnn",
            "train",
            "-c",
            str(TINY),
            *sets,
            "--data-dir",
            str(data_dir),
            "-o",
            "m.pth",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell's background job inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the child the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("epoch   1/50"):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + out
    assert any(line.startswith("epoch   1/50") for line in lines), out + err
    assert proc.returncode == 130, out + err
    assert "interrupted in epoch" in out
    assert "the last model (epoch 1" in out and "m.pth" in out
    assert err.strip().splitlines()[-1] == "mnistcnn: interrupted"
    assert "Traceback" not in err
    model = load_model(tmp_path / "m.pth")
    assert model.meta["epoch"] >= 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
