"""Latency of `mnistcnn serve`: the real command on a loopback port, timed from a client process.

    python benchmarks/serve_latency.py [--model models/cnn.pth] [--requests 200] [--concurrency 4]

Starts `python -m mnistcnn serve --port 0` (a free loopback port), then sends a bounded number
of `POST /api/predict` requests over keep-alive connections: canvas drawings one at a time (what
the page sends while you draw), phone-sized JPEG photos one at a time, and canvas drawings from
`--concurrency` clients at once. Prints p50 / p95 per phase. Without the model file, the default
`cnn` architecture is timed with untrained weights (the time does not depend on their values).
Run it on an otherwise idle machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
# A request loop never runs longer than this, whatever --requests says.
DEADLINE_S = 300.0


def canvas_png() -> bytes:
    """A 7 as the page sends it: dark strokes on a transparent 280x280 canvas."""
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(img).line(
        [(70, 60), (210, 60), (115, 235)], fill=(17, 17, 17, 255), width=18, joint="curve"
    )
    return _encode(img, "PNG")


def photo_jpeg() -> bytes:
    """A 3 in pen on uneven paper, 1200x1600 (a phone photo downscaled), as JPEG."""
    img = Image.linear_gradient("L").resize((1200, 1600)).point(lambda v: 150 + v // 3)
    draw = ImageDraw.Draw(img)
    draw.arc((430, 420, 770, 800), 200, 90, fill=30, width=22)
    draw.arc((420, 760, 790, 1160), 270, 160, fill=30, width=22)
    return _encode(img.filter(ImageFilter.GaussianBlur(1.5)).convert("RGB"), "JPEG")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    """A multipart/form-data body with the file in the field `image`, and its Content-Type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def start_server(model: Path) -> tuple[subprocess.Popen, str, int, float]:
    """The real command on a free loopback port: the process, its host, port and start-up time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistcnn", "serve", "--model", str(model), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    line = proc.stderr.readline()  # type: ignore[union-attr]
    match = re.search(r"at http://(127\.0\.0\.1):(\d+)/", line)
    if not match:
        proc.kill()
        sys.exit(f"the server did not start: {line.strip() or proc.stderr.read()}")  # type: ignore[union-attr]
    host, port = match.group(1), int(match.group(2))
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            if time.perf_counter() - t0 > 60:
                proc.kill()
                sys.exit("the server did not answer /healthz within 60 s")
            time.sleep(0.05)
    return proc, host, port, time.perf_counter() - t0


def timed_requests(host: str, port: int, body: bytes, ctype: str, count: int) -> list[float]:
    """`count` requests over one keep-alive connection; each one's seconds, send to last byte."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    times = []
    stop = time.perf_counter() + DEADLINE_S
    for _ in range(count):
        if time.perf_counter() > stop:
            break
        t0 = time.perf_counter()
        conn.request("POST", "/api/predict", body, {"Content-Type": ctype})
        response = conn.getresponse()
        payload = response.read()
        times.append(time.perf_counter() - t0)
        if response.status != 200 or not json.loads(payload)["found"]:
            sys.exit(f"unexpected answer {response.status}: {payload[:200]!r}")
    conn.close()
    return times


def summary(name: str, times: list[float], wall: float | None = None) -> str:
    ms = sorted(1000 * t for t in times)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    line = (
        f"{name:<36} n={len(ms):<4} p50 {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   "
        f"max {ms[-1]:6.1f} ms"
    )
    return line + (f"   {len(ms) / wall:5.1f} req/s" if wall else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "cnn.pth"), metavar="PTH")
    parser.add_argument("--requests", type=int, default=200, help="in all (default 200)")
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the last phase")
    args = parser.parse_args()

    import torch

    from mnistcnn.checkpoint import save_model
    from mnistcnn.model.nets import build_model

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model)
        if not model.is_file():
            model = Path(tmp) / "cnn-untrained.pth"
            torch.manual_seed(0)
            save_model(build_model("cnn", {}), model)
            print(f"{args.model} not found: timing the default cnn with untrained weights")
        proc, host, port, startup = start_server(model)
        try:
            lines = [f"server: {model.name} on http://{host}:{port}/, ready in {startup:.1f} s"]
            python = sys.version.split()[0]
            threads = torch.get_num_threads()
            lines.append(f"torch {torch.__version__}, {threads} threads, Python {python}")
            print("\n".join(lines))
            canvas, ctype = multipart(canvas_png(), "canvas.png")
            photo, ptype = multipart(photo_jpeg(), "photo.jpg")
            warm = 5
            timed_requests(host, port, canvas, ctype, warm)
            alone = (args.requests - warm) * 2 // 5
            photos = (args.requests - warm) // 5
            together = args.requests - warm - alone - photos
            lines.append(f"{args.requests} requests ({warm} warm-up):")
            lines.append(
                summary(
                    "canvas PNG 280x280, one at a time",
                    timed_requests(host, port, canvas, ctype, alone),
                )
            )
            lines.append(
                summary(
                    "photo JPEG 1200x1600, one at a time",
                    timed_requests(host, port, photo, ptype, photos),
                )
            )
            clients = max(1, args.concurrency)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                share = [together // clients + (i < together % clients) for i in range(clients)]
                parts = pool.map(lambda n: timed_requests(host, port, canvas, ctype, n), share)
                times = [t for part in parts for t in part]
            wall = time.perf_counter() - t0
            lines.append(summary(f"canvas PNG, {clients} clients at once", times, wall))
            print("\n".join(lines[2:]))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    from page import command_line, write_section

    write_section("Serve latency", command_line(), "```text\n" + "\n".join(lines) + "\n```")


if __name__ == "__main__":
    main()
