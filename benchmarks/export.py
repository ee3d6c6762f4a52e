"""How fast are the exported models? Every variant is timed in this one run, against eager PyTorch.

    python benchmarks/export.py MODEL.pth --data-dir ../shared/data [--threads 1]

Exports the model (fused TorchScript, fused ONNX, int8 TorchScript via torch.ao, int8 ONNX via
onnxruntime) to a temporary folder, then prints one Markdown table: test accuracy, test-set
throughput (images/s, batches of 1000), single-image latency (median), each as a speed-up over
eager PyTorch, and file sizes; then the cold start of `mnistcnn predict one.png` with the `.pth` and
with the `.onnx`. Run it on an otherwise idle machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnistcnn.checkpoint import load_model
from mnistcnn.data import default_cache_dir, load_mnist, to_float
from mnistcnn.export import export_model
from mnistcnn.export.formats import Runner, logits_of, runner
from mnistcnn.model.summary import fuse


def eager_runner(model: torch.nn.Module) -> Runner:
    """Eager PyTorch as `mnistcnn eval` runs it: channels_last, ~1.8x NCHW's speed on a CPU."""
    model = model.to(memory_format=torch.channels_last)

    def run(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(batch).numpy()

    return run


def throughput(run: Runner, images: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Images/s over the whole set (median of `repeats` passes after a warm-up) and the logits."""
    logits = logits_of(run, images)  # warm-up: first-call allocations and kernel choice
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits_of(run, images)
        seconds.append(time.perf_counter() - t0)
    return len(images) / statistics.median(seconds), logits


def latency(run: Runner, images: np.ndarray, calls: int) -> float:
    """Median seconds to classify one image (a different one each call)."""
    for i in range(20):
        run(images[i : i + 1])
    seconds = []
    for i in range(calls):
        one = images[i : i + 1]
        t0 = time.perf_counter()
        run(one)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def cold_start(pth: Path, onnx: Path, png: Path, repeats: int) -> dict[str, float]:
    """Median wall seconds of `mnistcnn predict one.png` with each model file."""
    commands = {
        name: [sys.executable, "-m", "mnistcnn", "predict", str(png), "-m", str(path)]
        for name, path in ((".pth", pth), (".onnx", onnx))
    }
    commands["python -c 'import torch'"] = [sys.executable, "-c", "import torch"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, metavar="MODEL.pth")
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the test set")
    parser.add_argument("--calls", type=int, default=300, help="timed single-image calls")
    parser.add_argument("--cold", type=int, default=5, help="cold-start runs of each command")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = load_mnist(args.data_dir, train=False, download=False, cache=default_cache_dir())
    images = to_float(test.images).numpy()
    labels = test.labels.numpy()
    model = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="mnistcnn-bench-") as tmp:
        out = Path(tmp)
        files = {
            "ts": ("torchscript", False, out / "fused.pt"),
            "onnx": ("onnx", False, out / "fused.onnx"),
            "ts8": ("torchscript", True, out / "int8.pt"),
            "onnx8": ("onnx", True, out / "int8.onnx"),
        }
        for fmt, int8, path in files.values():
            print(f"exporting {path.name}", file=sys.stderr, flush=True)
            export_model(
                args.model,
                path,
                fmt=fmt,
                fuse_bn=True,
                quantize="int8" if int8 else None,
                data_dir=args.data_dir,
            )

        def load(key: str) -> Runner:
            fmt, _, path = files[key]
            return runner(fmt, path.read_bytes(), threads=args.threads)

        folded = fuse(model)
        variants: list[tuple[str, Runner, Path | None]] = [
            ("PyTorch eager (.pth)", eager_runner(model), args.model),
            ("PyTorch eager, BatchNorm folded", eager_runner(folded), None),
            ("TorchScript, folded", load("ts"), files["ts"][2]),
            ("ONNX Runtime, folded", load("onnx"), files["onnx"][2]),
            ("int8 TorchScript (torch.ao FX, x86)", load("ts8"), files["ts8"][2]),
            ("int8 ONNX Runtime (QDQ)", load("onnx8"), files["onnx8"][2]),
        ]
        rows = []
        for name, run, path in variants:
            print(f"timing {name}", file=sys.stderr, flush=True)
            rate, logits = throughput(run, images, args.repeats)
            rows.append(
                {
                    "name": name,
                    "accuracy": float((logits.argmax(1) == labels).mean()),
                    "rate": rate,
                    "latency": latency(run, images, args.calls),
                    "bytes": path.stat().st_size if path else None,
                }
            )
        png = out / "one.png"
        Image.fromarray(255 - test.images[0].numpy()).resize((140, 140)).save(png)
        print("timing cold starts", file=sys.stderr, flush=True)
        cold = cold_start(args.model, files["onnx"][2], png, args.cold)

    eager = rows[0]
    lines = [
        f"{len(images)} test images, batches of 1000; {args.threads} thread(s); "
        f"eager in channels_last; torch {torch.__version__}",
        "",
        "| variant | size (kB) | test acc. (%) | images/s | speed-up "
        "| latency, 1 image (ms) | speed-up |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        size = f"{row['bytes'] / 1e3:.1f}" if row["bytes"] else "—"
        lines.append(
            f"| {row['name']} | {size} | {100 * row['accuracy']:.2f} | {row['rate']:,.0f} "
            f"| {row['rate'] / eager['rate']:.2f} | {1e3 * row['latency']:.3f} "
            f"| {eager['latency'] / row['latency']:.2f} |"
        )
    lines += ["", f"cold start, median of {args.cold} (s):", ""]
    lines += ["| command | seconds |", "|---|--:|"]
    for name, seconds in cold.items():
        label = name if name.startswith("python") else f"mnistcnn predict one.png -m model{name}"
        lines.append(f"| `{label}` | {seconds:.2f} |")
    print("\n" + "\n".join(lines))
    from page import command_line, write_section

    write_section("Export", command_line(), "\n".join(lines))


if __name__ == "__main__":
    main()
