"""`mnistcnn serve`: the HTTP API through FastAPI's test client, the CLI command, a real server.

Uploads are MNIST test digits re-drawn as photos (the `draw` fixture) and canvas-like PNGs;
the answers are checked against `mnistcnn predict`'s own preprocessing of the same files.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install '.[dev]'")

from fastapi.testclient import TestClient

from mnistcnn.cli import main
from mnistcnn.model.summary import count_parameters
from mnistcnn.photo.digit import preprocess
from mnistcnn.serve import app as serve

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client(digit_model: Any, digit_model_run: dict) -> TestClient:
    return TestClient(serve.create_app(digit_model, str(digit_model_run["path"])))


@pytest.fixture(scope="module")
def photos(mnist_test: Any, draw: Callable, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One re-drawn test digit per class: {label: (png path, jpeg path)}."""
    out = tmp_path_factory.mktemp("serve-photos")
    found = {}
    for label in range(10):
        digit = mnist_test.images[int((mnist_test.labels == label).nonzero()[0][0])].numpy()
        png, jpg = out / f"{label}.png", out / f"{label}.jpg"
        draw(digit, png, canvas=200, height=120, at=(40, 30), style="L")
        draw(digit, jpg, canvas=300, height=180, at=(70, 50), style="JPEG")
        found[label] = (png, jpg)
    return found


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _canvas(lines: list[list[tuple[int, int]]] | None = None) -> bytes:
    """What the page sends: dark strokes on a transparent 280x280 canvas."""
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    for line in lines or []:
        ImageDraw.Draw(img).line(line, fill=(17, 17, 17, 255), width=18, joint="curve")
    return _png(img)


def _post_file(client: TestClient, data: bytes, name: str = "x.png", field: str = "image") -> Any:
    return client.post("/api/predict", files={field: (name, data, "application/octet-stream")})


def _seen(answer: dict) -> np.ndarray:
    img = Image.open(io.BytesIO(base64.b64decode(answer["image"])))
    assert (img.size, img.mode) == ((28, 28), "L")
    return np.asarray(img, np.float32) / 255


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_model_describes_the_pth(client: TestClient, digit_model: Any, digit_model_run: dict):
    info = client.get("/api/model").json()
    assert info["file"] == Path(digit_model_run["path"]).name
    assert info["arch"] == "baseline" and info["args"]["channels"] == [8, 16]
    assert info["parameters"] == count_parameters(digit_model)
    assert (info["mean"], info["std"]) == (digit_model.mean, digit_model.std)
    assert info["metrics"]["test_accuracy"] == pytest.approx(digit_model_run["test_accuracy"])


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_photos_are_classified_like_predict(client: TestClient, photos: dict, kind: str) -> None:
    correct = 0
    for label, files in photos.items():
        path = files[kind == "jpeg"]
        response = _post_file(client, path.read_bytes(), path.name)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["found"] is True and answer["message"] is None
        probs = answer["probabilities"]
        assert len(probs) == 10 and sum(probs) == pytest.approx(1, abs=1e-4)
        assert answer["label"] == int(np.argmax(probs))
        assert answer["probability"] == pytest.approx(max(probs))
        # The image the model saw is exactly what `mnistcnn predict` makes of the same file.
        np.testing.assert_allclose(_seen(answer), preprocess(path).image, atol=1 / 255 + 1e-6)
        correct += answer["label"] == label
    assert correct >= 9


def test_base64_json_data_url_and_raw_body_agree(client: TestClient, photos: dict) -> None:
    data = photos[7][0].read_bytes()
    text = base64.b64encode(data).decode()
    answers = [
        _post_file(client, data).json(),
        client.post("/api/predict", json={"image": text}).json(),
        client.post("/api/predict", json={"image": f"data:image/png;base64,{text}"}).json(),
        client.post("/api/predict", content=data, headers={"Content-Type": "image/png"}).json(),
    ]
    assert [a["label"] for a in answers] == [7] * 4
    assert all(a["probabilities"] == answers[0]["probabilities"] for a in answers)


def test_a_canvas_drawing(client: TestClient) -> None:
    seven = _canvas([[(70, 60), (210, 60), (115, 235)]])
    answer = _post_file(client, seven, "canvas.png").json()
    assert answer["label"] == 7, answer["probabilities"]


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (280, 280), (0, 0, 0, 0)),  # the page's empty canvas
        Image.new("L", (280, 280), 255),  # blank paper
        Image.new("RGB", (64, 64), (0, 0, 0)),
    ],
    ids=["transparent", "white", "black"],
)
def test_empty_canvas_is_no_digit_not_an_error(client: TestClient, image: Image.Image) -> None:
    response = _post_file(client, _png(image))
    assert response.status_code == 200
    answer = response.json()
    assert answer["found"] is False and answer["label"] is None
    assert answer["probabilities"] is None and answer["image"] is None
    assert "no digit" in answer["message"]


def test_oversized_upload_is_413(client: TestClient) -> None:
    big = os.urandom(serve.MAX_BODY_BYTES + 1024)
    response = _post_file(client, big, "big.png")
    assert response.status_code == 413
    assert response.json() == {"detail": "request body too large (limit 5 MB)"}


def test_oversized_streamed_body_is_413(client: TestClient) -> None:
    """Without a Content-Length, the body is counted as it arrives."""

    def chunks() -> Any:
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    response = client.post("/api/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


def test_too_many_pixels_is_413_before_decoding(client: TestClient) -> None:
    huge = _png(Image.new("L", (6000, 5000), 255))  # ~40 kB, 30 megapixels
    response = _post_file(client, huge, "huge.png")
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "image too large: 6000x5000 pixels (limit 25,000,000) (huge.png)"
    )


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        (b"hello, not a picture", 415, "not an image, or a format Pillow cannot read (x.png)"),
        (b"%PDF-1.4\n", 415, "not an image"),
        (b"", 400, "the upload is empty (x.png)"),
        (None, 422, "cannot decode image x.png"),  # a truncated PNG
    ],
    ids=["text", "pdf", "empty", "truncated"],
)
def test_non_images_are_4xx_json(
    client: TestClient, photos: dict, data: bytes | None, status: int, detail: str
) -> None:
    if data is None:
        data = photos[3][0].read_bytes()[:300]
    response = _post_file(client, data)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"].startswith(detail)
    assert "mnistcnn-upload-" not in response.text  # the temp file's name never leaks


def test_wrong_field_is_422(client: TestClient, photos: dict) -> None:
    response = _post_file(client, photos[1][0].read_bytes(), field="file")
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "multipart field 'image' must hold the image file: missing (got file)"
    )
    response = client.post("/api/predict", files={"image": (None, "abc")})  # a text field
    assert response.status_code == 422
    assert "a text field, not a file" in response.json()["detail"]


@pytest.mark.parametrize(
    ("kwargs", "status", "detail"),
    [
        ({"json": {"picture": "abc"}}, 422, 'expected JSON {"image": "<base64 PNG>"}'),
        ({"json": {"image": "not base64!"}}, 422, "the JSON field 'image' is not valid base64"),
        ({"json": {"image": 42}}, 422, "expected JSON"),
        ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 422, "expected"),
        ({"content": b"7", "headers": {"Content-Type": "text/plain"}}, 415, "send the image as"),
        ({"data": {"image": "x"}}, 415, "send the image as"),
        ({}, 415, "send the image as"),
    ],
    ids=["json-key", "bad-base64", "json-type", "bad-json", "text", "urlencoded", "no-body"],
)
def test_bad_requests_are_4xx_json(client: TestClient, kwargs: dict, status: int, detail: str):
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status
    assert response.json()["detail"].startswith(detail)


def test_unknown_paths_and_methods_are_json(client: TestClient) -> None:
    assert client.get("/nope").json() == {"detail": "Not Found"}
    assert client.get("/api/predict").status_code == 405


def test_a_bug_is_a_500_without_traceback(
    digit_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(model: Any, img: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(serve, "predict_image", broken)
    client = TestClient(serve.create_app(digit_model), raise_server_exceptions=False)
    response = client.post("/api/predict", content=_canvas(), headers={"Content-Type": "image/png"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "secret" not in response.text and "Traceback" not in response.text


def test_concurrent_requests_get_the_same_answers(client: TestClient, photos: dict) -> None:
    files = [photos[label][label % 2].read_bytes() for label in range(10)] * 2
    alone = [_post_file(client, data).json() for data in files[:10]]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda data: _post_file(client, data).json(), files))
    assert together == alone * 2


def test_page_and_static_files_are_served_without_a_cdn(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert ref.startswith(("/", "data:")), ref
    for name in ("app.js", "style.css"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text


def test_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= schema["paths"].keys()
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= body.keys()
    assert client.get("/docs").status_code == 404  # FastAPI's docs page would load a CDN


def test_is_loopback() -> None:
    class Fake:
        def __init__(self, host: str) -> None:
            self.host = host

        def getsockname(self) -> tuple[str, int]:
            return self.host, 8000

    assert serve.is_loopback(Fake("127.0.0.1")) and serve.is_loopback(Fake("::1"))  # type: ignore[arg-type]
    assert not serve.is_loopback(Fake("0.0.0.0"))  # type: ignore[arg-type]
    assert serve.url(Fake("::1")) == "http://[::1]:8000/"  # type: ignore[arg-type]


def test_cli_errors(digit_model_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = str(digit_model_run["path"])
    assert main(["serve", "--model", str(tmp_path / "none.pth")]) == 1
    assert "model file not found" in capsys.readouterr().err
    assert main(["serve", "--model", model, "--port", "70000"]) == 1
    assert "port must be 0-65535" in capsys.readouterr().err
    taken = serve.bind("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        assert main(["serve", "--model", model, "--port", port]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mnistcnn: error: cannot listen on 127.0.0.1:{port}: ")
        assert err.count("\n") == 1
    finally:
        taken.close()


def test_cli_without_the_serve_extra(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for name in [m for m in sys.modules if m.split(".")[:2] == ["mnistcnn", "serve"]]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    assert main(["serve"]) == 1
    assert capsys.readouterr().err == (
        "mnistcnn: error: serve needs fastapi: pip install 'mnistcnn[serve]'\n"
    )


@pytest.mark.slow  # a real process: starts Python, torch and uvicorn
def test_serve_subprocess(digit_model_run: dict, photos: dict) -> None:
    """The real command: says where it listens (loopback), answers, stops on Ctrl-C."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnistcnn",
            "serve",
            "-m",
            str(digit_model_run["path"]),
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        # As at a terminal: a shell running the tests in the background may have it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stderr.readline()  # type: ignore[union-attr]
        match = re.search(r"at (http://127\.0\.0\.1:\d+/) \(loopback only", first)
        assert match, first
        base = match.group(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "healthz", timeout=5) as response:
                    assert json.load(response) == {"status": "ok"}
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.1)
        request = urllib.request.Request(
            base + "api/predict",
            data=photos[4][1].read_bytes(),
            headers={"Content-Type": "image/jpeg"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["label"] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.endswith("mnistcnn: interrupted\n")
