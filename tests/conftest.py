"""Shared fixtures: where MNIST is, the real splits, and models trained once per session.

MNIST is read from `../shared/data` beside the repository (or `$MNISTCNN_DATA`), never
downloaded. Decoded tensors are cached in a per-session temporary folder, not in ~/.cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny.yaml"
DATA = Path(
    os.environ.get("MNISTCNN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)

# The strong model the predict tests use: the PyTorch-example architecture, narrowed, one
# epoch over 30k images: ~98 % test accuracy, 97 % on the re-drawn digits. (A GAP CNN of
# similar cost only reaches ~96 %, too close to the 95 % the re-drawn digits must reach; a
# second epoch or smaller batches cost twice as much for < 0.3 %.)
DIGIT_MODEL_SETS = (
    "model={name: baseline, channels: [8, 16], hidden: 128}",
    "optim.lr=0.004",
    "data.subset=30000",
    "data.val_size=1000",
    "train.epochs=1",
)


# Torch threads for the tests (and their subprocesses). One: on a 2-core machine shared with
# another training job, two OpenMP threads wait on each other and the tiny models here train
# slower than on one.
THREADS = int(os.environ.get("MNISTCNN_TEST_THREADS", "1"))


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test (and any subprocess) runs: the package caches decoded MNIST under
    # $MNISTCNN_CACHE, which must not be the user's ~/.cache.
    cache = tempfile.mkdtemp(prefix="mnistcnn-test-cache-")
    config._mnistcnn_cache = cache  # type: ignore[attr-defined]
    os.environ["MNISTCNN_CACHE"] = cache
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


def pytest_unconfigure(config: pytest.Config) -> None:
    cache = getattr(config, "_mnistcnn_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding MNIST/raw/ with the four IDX files."""
    raw = DATA / "MNIST" / "raw"
    if not (raw / "t10k-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST not found in {raw}: set MNISTCNN_DATA to the folder holding MNIST/raw")
    return DATA


@pytest.fixture(scope="session")
def mnist_test(data_dir: Path) -> Any:
    """The real 10k test split."""
    from mnistcnn.data import load_mnist

    return load_mnist(data_dir, train=False, download=False)


@pytest.fixture(scope="session")
def mnist_train(data_dir: Path) -> Any:
    """The real 60k training images."""
    from mnistcnn.data import load_mnist

    return load_mnist(data_dir, train=True, download=False)


@pytest.fixture
def make_cfg(data_dir: Path, tmp_path: Path) -> Callable[..., Any]:
    """`make_cfg(*overrides, config=TINY)`: a CPU config writing under tmp_path."""
    from mnistcnn.config.build import load_config

    def make(*overrides: str, config: Path | None = TINY) -> Any:
        base = [
            f"data.root={data_dir}",
            "data.download=false",
            f"train.output={tmp_path / 'model.pth'}",
            "train.device=cpu",
            "train.run_dir=null",  # no run folder (TensorBoard events) unless a test asks
        ]
        return load_config(config, [*base, *overrides])

    return make


@pytest.fixture(scope="session")
def small_splits(mnist_train: Any, mnist_test: Any) -> Callable[..., Any]:
    """`small_splits(cfg, test_images=500)`: the session's MNIST split as `cfg` says, for `fit`."""
    from mnistcnn.data import Split, splits_of

    def make(cfg: Any, test_images: int = 500) -> Any:
        test = Split(mnist_test.images[:test_images], mnist_test.labels[:test_images])
        return splits_of(mnist_train, test, cfg.data)

    return make


@pytest.fixture
def small_data(
    monkeypatch: pytest.MonkeyPatch, mnist_train: Any, mnist_test: Any
) -> Callable[[int], None]:
    """For tests through the CLI, which cannot hand `fit` its splits: the session's MNIST with
    a test set of only `n` images instead of the files (tests calling `fit` use small_splits)."""
    from mnistcnn import data
    from mnistcnn.data import Split

    def use(test_images: int = 500) -> None:
        def session_mnist(root: Any, train: bool, *args: Any, **kwargs: Any) -> Any:
            if train:
                return mnist_train
            return Split(mnist_test.images[:test_images], mnist_test.labels[:test_images])

        monkeypatch.setattr(data, "load_mnist", session_mnist)

    return use


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def log_lines(handler: type[_Lines] = _Lines) -> Iterator[list[str]]:
    """The messages the package logs (INFO and up) inside the block, through `handler`."""
    lines: list[str] = []
    logger, sink = logging.getLogger("mnistcnn"), handler(lines)
    level = logger.level
    logger.addHandler(sink)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(sink)
        logger.setLevel(level)


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The messages the package logs during the test (INFO and up), in order."""
    with log_lines() as lines:
        yield lines


def _fit(
    data_dir: Path,
    out: Path,
    config: Path | None,
    overrides: tuple[str, ...],
    splits: Callable[..., Any] | None = None,
) -> dict:
    """Train on CPU into `out`; the run folder (if any) goes beside it, never into the repo."""
    from mnistcnn.config.build import load_config
    from mnistcnn.train.fitting import fit

    cfg = load_config(
        config,
        [
            f"data.root={data_dir}",
            "data.download=false",
            f"train.output={out}",
            "train.device=cpu",
            f"train.run_dir={out.parent / 'runs'}",
            *overrides,
        ],
    )
    with log_lines() as logs:
        result = fit(cfg, splits=splits and splits(cfg, 1000), progress=False)
    return {**result, "path": out, "cfg": cfg, "logs": logs}


def _once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], dict]) -> dict:
    """A session fixture's run made once for all the pytest-xdist workers: the first makes it
    in a folder they share, the others wait for it and read its result."""
    from filelock import FileLock

    from mnistcnn.config.build import from_dict, to_dict

    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    saved = root / f"{name}.json"
    with FileLock(f"{saved}.lock"):
        if not saved.is_file():
            (root / name).mkdir()
            result = make(root / name)
            kept = {**result, "path": str(result["path"]), "cfg": to_dict(result["cfg"])}
            saved.write_text(json.dumps(kept))
    result = json.loads(saved.read_text())
    return {**result, "path": Path(result["path"]), "cfg": from_dict(result["cfg"])}


@pytest.fixture(scope="session")
def tiny_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """configs/tiny.yaml exactly as shipped (its data, model and schedule), trained once."""
    return _once(tmp_path_factory, "tiny", lambda d: _fit(data_dir, d / "tiny.pth", TINY, ()))


@pytest.fixture(scope="session")
def small_run(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, small_splits: Callable[..., Any]
) -> dict:
    """tiny.yaml's two epochs on 1,000 training images, tested on 1,000, trained once."""
    out = tmp_path_factory.mktemp("small") / "small.pth"
    sets = ("data.subset=1000", "data.val_size=500", "train.run_dir=null")
    return _fit(data_dir, out, TINY, sets, small_splits)


@pytest.fixture(scope="session")
def digit_model_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A ~98 % model for the prediction tests, trained once."""
    sets = (*DIGIT_MODEL_SETS, "train.run_dir=null")
    return _once(tmp_path_factory, "digits", lambda d: _fit(data_dir, d / "digits.pth", TINY, sets))


@pytest.fixture(scope="session")
def digit_model(digit_model_run: dict) -> Any:
    from mnistcnn.checkpoint import load_model

    return load_model(digit_model_run["path"])


def draw_digit(
    digit: np.ndarray, path: Path, *, canvas: int, height: int, at: tuple[int, int], style: str
) -> None:
    """Re-draw a 28x28 MNIST digit (white on black) as dark ink on white paper.

    The digit is scaled to `height` pixels and placed with its top-left corner at `at` on a
    `canvas`-pixel square. `style`: "RGB", "L" (PNG), "RGBA" (black ink on a transparent
    background), or "JPEG" (RGB, lossy).
    """
    ink = np.asarray(Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC))
    sheet = np.zeros((canvas, canvas), np.uint8)
    x, y = at
    sheet[y : y + height, x : x + height] = ink
    if style == "RGBA":
        rgba = np.zeros((canvas, canvas, 4), np.uint8)
        rgba[..., 3] = sheet  # black ink, opaque where the digit is
        Image.fromarray(rgba, "RGBA").save(path)
        return
    paper = Image.fromarray(255 - sheet, "L")
    if style == "L":
        paper.save(path)
    elif style == "RGB":
        paper.convert("RGB").save(path)
    elif style == "JPEG":
        paper.convert("RGB").save(path, quality=90)
    else:
        raise ValueError(style)


STYLES = ("RGB", "L", "RGBA", "JPEG")


@pytest.fixture(scope="session")
def digit_images(mnist_test: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, int]:
    """200 MNIST test digits re-drawn as photos of paper: various sizes, places and formats."""
    out = tmp_path_factory.mktemp("redrawn")
    rng = np.random.default_rng(0)
    labels: dict[Path, int] = {}
    for n, i in enumerate(rng.choice(len(mnist_test), 200, replace=False)):
        canvas = int(rng.integers(60, 301))
        height = int(rng.integers(canvas // 3, canvas * 3 // 4 + 1))
        at = (int(rng.integers(0, canvas - height + 1)), int(rng.integers(0, canvas - height + 1)))
        style = STYLES[n % len(STYLES)]
        path = out / f"{n:03d}.{'jpg' if style == 'JPEG' else 'png'}"
        draw_digit(
            mnist_test.images[i].numpy(), path, canvas=canvas, height=height, at=at, style=style
        )
        labels[path] = int(mnist_test.labels[i])
    return labels


@pytest.fixture
def seven(mnist_test: Any) -> np.ndarray:
    """The first 7 of the test set (28x28 uint8, white on black)."""
    return mnist_test.images[int((mnist_test.labels == 7).nonzero()[0])].numpy()


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    # `fit` calls torch.set_num_threads when train.threads is set; keep tests independent.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def draw() -> Callable[..., None]:
    """The `draw_digit` helper, for tests that make their own images."""
    return draw_digit


# The browser tests drive Debian's chromium; Playwright never downloads a browser here
# (`.ci/run` installs chromium when it is absent).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless chromium through Playwright, shared by the browser tests."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install '.[dev]'"
    )
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
