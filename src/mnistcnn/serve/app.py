"""The web app (the page, `/api/predict`, `/api/model`) and the uvicorn server that runs it.

An upload is decoded by `photo.open_image` and preprocessed as `mnistcnn predict` reads a file.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from anyio import to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnistcnn.checkpoint import load_model
from mnistcnn.errors import ImageError, MnistCnnError
from mnistcnn.model.nets import DigitNet
from mnistcnn.model.summary import count_parameters
from mnistcnn.photo.decode import EmptyImage, ImageTooLarge, NotAnImage, open_image
from mnistcnn.photo.digit import preprocess_image
from mnistcnn.predict.classify import classify
from mnistcnn.predict.files import MIN_CONFIDENCE

STATIC = Path(__file__).parent / "static"
FIELD = "image"
JSON_FORM = '{"image": "<base64 PNG>"}'
# A phone photo is 2-5 MB as JPEG; a canvas PNG is a few kB. Bigger bodies are refused unread.
MAX_BODY_BYTES = 5 * 1024 * 1024
# Stricter than a file's limit: each of the WORKERS decodes at once holds up to 4 bytes a pixel.
MAX_UPLOAD_PIXELS = 25_000_000
# Images decoded and preprocessed at once: the work is CPU-bound, more would only add memory.
WORKERS = 4
# The page may load only what this server serves: no CDN, no inline script.
CSP = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'"
# The HTTP status of each way an upload fails to decode (any other: 422).
STATUS = {EmptyImage: 400, ImageTooLarge: 413, NotAnImage: 415}
ERRORS = {
    400: "empty or malformed upload",
    413: "body or image too large",
    415: "not an image, or an unsupported Content-Type",
    422: "missing field, bad base64, or an image that cannot be decoded",
}

log = logging.getLogger(__name__)


class Prediction(BaseModel):
    """What the model thinks of one image."""

    found: bool = Field(description="whether a digit was found in the image")
    label: int | None = Field(None, description="the most probable digit")
    probability: float | None = Field(None, description="its probability")
    probabilities: list[float] | None = Field(
        None, description="p(0) ... p(9), calibrated by the model's temperature when it has one"
    )
    low_confidence: bool | None = Field(
        None, description="whether the probability is below 0.5: more likely wrong than right"
    )
    image: str | None = Field(
        None, description="base64 PNG of the 28x28 image the model saw (white ink on black)"
    )
    message: str | None = Field(None, description="why no digit was found")


class Base64Image(BaseModel):
    """A JSON upload: a base64 PNG (or JPEG...), optionally as a `data:` URL."""

    image: str


class ModelInfo(BaseModel):
    """The served `.pth`, as it describes itself."""

    file: str
    arch: str
    args: dict[str, Any]
    parameters: int
    mean: float
    std: float
    metrics: dict[str, Any] = Field(description="what training recorded (accuracy, epochs...)")


class ErrorBody(BaseModel):
    detail: str


def body_limit(app: ASGIApp, max_bytes: int) -> ASGIApp:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length or as it streams."""
    too_large = f"request body too large (limit {max_bytes // 1024 // 1024} MB)"

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            return await JSONResponse({"detail": too_large}, 413)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:  # a chunked body without Content-Length
                raise HTTPException(413, too_large)
            return message

        await app(scope, counted, send)

    return limited


def predict_image(model: DigitNet, img: Image.Image) -> Prediction:
    """Preprocess as `predict` does, then classify; no digit is an answer, not an error."""
    try:
        image = preprocess_image(img).image
    except ImageError as exc:
        return Prediction(found=False, message=str(exc))
    probs = classify(model, image[None].astype(np.float32))[0].tolist()
    label = int(np.argmax(probs))
    png = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8), "L").save(png, "PNG")
    return Prediction(
        found=True,
        label=label,
        probability=probs[label],
        probabilities=probs,
        low_confidence=probs[label] < MIN_CONFIDENCE,
        image=base64.b64encode(png.getvalue()).decode("ascii"),
    )


async def read_upload(request: Request) -> tuple[bytes, str]:
    """The image bytes of a multipart (field `image`), JSON (base64) or raw request, and a name."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            got = ", ".join(sorted(set(form.keys()))) or "no fields"
            kind = "a text field, not a file" if FIELD in form else f"missing (got {got})"
            raise HTTPException(422, f"multipart field {FIELD!r} must hold the image file: {kind}")
        return await upload.read(), upload.filename or "upload"
    if media == "application/json":
        try:
            text = Base64Image.model_validate_json(await request.body()).image
        except ValueError:
            raise HTTPException(422, f"expected JSON {JSON_FORM}") from None
        text = "".join(text.split())
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            return base64.b64decode(text, validate=True), "base64 image"
        except binascii.Error:
            raise HTTPException(422, "the JSON field 'image' is not valid base64") from None
    if media.startswith("image/") or media == "application/octet-stream":
        return await request.body(), "upload"
    raise HTTPException(
        415,
        f"send the image as multipart/form-data (file field {FIELD!r}), as JSON {JSON_FORM} or "
        f"as a raw image/* body, not {media or 'a body without Content-Type'}",
    )


BINARY = {"type": "string", "format": "binary"}
PREDICT_BODY = {
    "multipart/form-data": {
        "schema": {"type": "object", "required": [FIELD], "properties": {FIELD: BINARY}}
    },
    "application/json": {"schema": Base64Image.model_json_schema()},
    "image/*": {"schema": BINARY},
}
PREDICT_HELP = (
    f"Multipart with the image in the file field {FIELD!r}, JSON {JSON_FORM} (a `data:` URL "
    "works too), or the raw image as the body (Content-Type image/png, image/jpeg...). "
    "An image without a digit (an empty canvas) is answered 200 with `found: false`."
)


def create_app(model: DigitNet, file: str = "") -> FastAPI:
    """The web app around a loaded model (read-only, shared by concurrent requests)."""
    # No /docs or /redoc: FastAPI's pages load Swagger UI from a CDN; the schema is served.
    app = FastAPI(
        title="mnistcnn",
        summary="Draw a digit, see what the network thinks.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(body_limit, max_bytes=MAX_BODY_BYTES)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    info = model.get_extra_state()
    described = ModelInfo(
        file=Path(file).name,
        parameters=count_parameters(model),
        metrics=info["meta"],
        **{key: info[key] for key in ("arch", "args", "mean", "std")},
    )
    busy = threading.BoundedSemaphore(WORKERS)

    def work(data: bytes, name: str) -> Prediction:
        with busy:
            try:
                img = open_image(data, name, MAX_UPLOAD_PIXELS)
            except ImageError as exc:
                raise HTTPException(STATUS.get(type(exc), 422), str(exc)) from None
            return predict_image(model, img)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, 500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})

    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/model", summary="the served model")
    async def model_endpoint() -> ModelInfo:
        return described

    @app.post(
        "/api/predict",
        summary="classify a digit image",
        description=PREDICT_HELP,
        openapi_extra={"requestBody": {"required": True, "content": PREDICT_BODY}},
        responses={
            code: {"model": ErrorBody, "description": text} for code, text in ERRORS.items()
        },
    )
    async def predict_endpoint(request: Request) -> Prediction:
        data, name = await read_upload(request)
        # Decoding, preprocessing and the forward pass are CPU work: off the event loop.
        return await to_thread.run_sync(work, data, name)

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one); MnistCnnError if it cannot be had."""
    if not 0 <= port <= 65535:  # getaddrinfo would silently wrap it modulo 65536
        raise MnistCnnError(f"port must be 0-65535 (0: any free port), not {port}")
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        return sock
    except (OSError, OverflowError) as exc:
        if sock is not None:
            sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MnistCnnError(f"cannot listen on {host}:{port}: {reason}") from None


def url(sock: socket.socket) -> str:
    """http://host:port/ of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(sock: socket.socket) -> bool:
    """Whether the socket only accepts connections from this machine."""
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def server(app: FastAPI) -> uvicorn.Server:
    """A quiet uvicorn server for `app` (start it with `.run(sockets=[sock])`)."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def serve(model_path: str | Path, host: str, port: int) -> None:
    """Load the model, bind, say where, and serve until Ctrl-C."""
    model = load_model(model_path)
    sock = bind(host, port)
    app = create_app(model, str(model_path))
    where = f"mnistcnn: serving {model_path} at {url(sock)}"
    if is_loopback(sock):
        log.info("%s (loopback only: this machine)", where)
    else:
        log.info("%s -- NOT loopback: reachable from other machines, with no authentication", where)
    log.info("mnistcnn: API: POST /api/predict, GET /api/model, /openapi.json; Ctrl-C to stop")
    server(app).run(sockets=[sock])
