"""How fast is mnistcnn? Every figure is timed in this one run, against a baseline timed beside it.

    python benchmarks/speed.py --data-dir ../shared/data [--seeds 5] [--skip-base]

1. Time to 99 %: configs/fast.yaml over several seeds vs the common PyTorch example's recipe
   (benchmarks/reference.py) trained until its test accuracy reaches 99.0 %. fast.yaml is timed
   as a user waits: the whole `mnistcnn train` command (data loading, training, validation,
   calibration, the final test, the files written) less a process that only imports torch,
   torchvision and mnistcnn; the reference by its training seconds alone.
2. configs/base.yaml: test accuracy and total training time.
3. Eval throughput: `mnistcnn eval`'s path, float32 and `--amp`, vs the example's test loop on
   the same weights, for fast.yaml's model and the bundled one (base.yaml's).
4. Predict cold start: `mnistcnn predict one.png` vs `python -c "import torch"`.
5. Threads and precision: training images/s at 1 and 2 torch threads, and in float32 against
   bf16 autocast (which `train.amp` picks on this CPU).
(benchmarks/gpu.py measures a CUDA GPU.)
Run it on an otherwise idle machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference

from mnistcnn.bundled import BUNDLED
from mnistcnn.checkpoint import load_model
from mnistcnn.config.build import load_config
from mnistcnn.data import (
    Split,
    augment_batch,
    default_cache_dir,
    load_mnist,
    to_float,
    train_loader,
)
from mnistcnn.model.nets import build_model
from mnistcnn.train.build import autocast_dtype
from mnistcnn.train.fitting import fit
from mnistcnn.train.loops import predict_logits

ROOT = Path(__file__).resolve().parents[1]


def run_config(name: str, data_dir: str, out: Path, *sets: str) -> dict:
    """Train configs/NAME.yaml in this process; the summary plus the wall time of `fit`."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", [f"data.root={data_dir}", *sets])
    t0 = time.perf_counter()
    result = fit(cfg, overwrite=True, progress=False)
    return {**result, "wall": time.perf_counter() - t0, "path": out}


def command_seconds(command: list[str]) -> float:
    """Wall seconds of a command in a fresh Python process (its output discarded)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, capture_output=True)
    return time.perf_counter() - t0


def import_seconds(repeats: int = 5) -> float:
    """Median wall seconds of a Python process that imports torch, torchvision and mnistcnn."""
    code = "import torch, torchvision, mnistcnn.cli.commands"
    return statistics.median(command_seconds(["-c", code]) for _ in range(repeats))


def time_to_99(data_dir: str, seeds: int, out_dir: Path) -> tuple[dict, list[dict]]:
    """The reference's training time to 99 % test accuracy, and fast.yaml's `mnistcnn train`
    commands as a user waits for them, each seed in its own process."""
    ref = {}
    for ref in reference.train_until(data_dir, target=0.99, max_epochs=8):
        print(
            f"  reference epoch {ref['epoch']}: {100 * ref['accuracy']:.2f} % "
            f"after {ref['seconds']:.0f} s of training",
            flush=True,
        )
    fast = []
    for seed in range(seeds):
        out = out_dir / f"fast-{seed}.pth"
        train = ["-m", "mnistcnn", "train", "--config", str(ROOT / "configs" / "fast.yaml")]
        sets = [
            "--data-dir",
            data_dir,
            "--set",
            f"train.seed={seed}",
            "--set",
            f"train.output={out}",
        ]
        seconds = command_seconds([*train, *sets, "--overwrite"])
        fast.append({**load_model(out).meta, "command": seconds, "path": out})
        print(
            f"  fast.yaml seed {seed}: {100 * fast[-1]['test_accuracy']:.2f} %, "
            f"the command {seconds:.1f} s ({fast[-1]['train_seconds']:.1f} s in training)",
            flush=True,
        )
    return ref, fast


def eval_throughput(
    model_path: Path, data_dir: str, repeats: int = 3, device: torch.device = reference.CPU
) -> dict[str, float]:
    """Test-set images/s of one model's weights: the example's test loop (batch 1000, float32),
    mnistcnn's eval path as `mnistcnn eval` runs it (data loading included: cached tensors,
    BatchNorm folded, batches sized to the caches; 1000 on a GPU) and the same with `--amp`.
    On a GPU both end with the logits back on the host."""
    ours = load_model(model_path).to(device, memory_format=torch.channels_last)
    _, test_loader = reference.loaders(data_dir)
    images = len(test_loader.dataset)
    times: dict[str, list[float]] = {"reference": [], "eval": [], "eval --amp": []}
    warm = int(device.type != "cpu")  # a GPU's first round warms up (cuDNN picks its kernels)
    for _ in range(warm + repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for data, _target in test_loader:  # already normalized by the transform
                ours.logits(data.to(device)).cpu()
        times["reference"].append(time.perf_counter() - t0)
        for name, amp in (("eval", False), ("eval --amp", True)):
            t0 = time.perf_counter()
            test = load_mnist(data_dir, train=False, download=False, cache=default_cache_dir())
            predict_logits(ours, test, 0, device, amp=amp, channels_last=True).cpu()
            times[name].append(time.perf_counter() - t0)
    return {name: images / statistics.median(s[warm:]) for name, s in times.items()}


def data_path_throughput(data_dir: str, cfg_name: str = "fast") -> tuple[float, float]:
    """Training images/s of the data path alone (no model): the example's DataLoader with
    per-sample ToTensor + Normalize (batch 64) vs mnistcnn's loader, float conversion and batch
    augmentation (fast.yaml's batch and augmentation), over one epoch each."""
    train_loader_ref, _ = reference.loaders(data_dir)
    t0 = time.perf_counter()
    seen = sum(len(labels) for _, labels in train_loader_ref)
    ref_rate = seen / (time.perf_counter() - t0)
    cfg = load_config(ROOT / "configs" / f"{cfg_name}.yaml", [f"data.root={data_dir}"])
    train = load_mnist(data_dir, train=True, download=False, cache=default_cache_dir())
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    seen = 0
    for images, labels in train_loader(train, cfg.data.batch_size, generator):
        augment_batch(to_float(images), cfg.data.augment, generator)
        seen += len(labels)
    return ref_rate, seen / (time.perf_counter() - t0)


def cold_start(model_path: Path, data_dir: str, repeats: int = 5) -> tuple[float, float]:
    """Median wall seconds of `import torch` and of `mnistcnn predict one.png`."""
    test = load_mnist(data_dir, train=False, download=False, cache=default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "one.png"
        Image.fromarray(255 - test.images[0].numpy()).resize((140, 140)).save(png)
        commands = {
            "torch": [sys.executable, "-c", "import torch"],
            "predict": [
                sys.executable,
                "-m",
                "mnistcnn",
                "predict",
                str(png),
                "-m",
                str(model_path),
            ],
        }
        times: dict[str, list[float]] = {"torch": [], "predict": []}
        for _ in range(repeats):
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    return statistics.median(times["torch"]), statistics.median(times["predict"])


def step_throughput(
    config: str, train: Split, threads: int, dtype: torch.dtype | None, steps: int = 40
) -> float:
    """Training images/s of a config's model (forward, backward, SGD step on one batch of
    `train`) at `threads` torch threads, in float32 (`dtype` None) or under autocast to `dtype`."""
    cfg = load_config(ROOT / "configs" / f"{config}.yaml")
    images = to_float(train.images[: cfg.data.batch_size]).contiguous(
        memory_format=torch.channels_last
    )
    labels = train.labels[: cfg.data.batch_size]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = build_model(cfg.model.name, dict(cfg.model.kwargs)).to(
        memory_format=torch.channels_last
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(steps + 5):
        if step == 5:  # warm-up done
            t0 = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
    rate = steps * len(labels) / (time.perf_counter() - t0)
    torch.set_num_threads(before)
    return rate


def print_table(machine: str, rows: list[tuple[str, str, str]]) -> str:
    """Print the run's machine, then its figures as a Markdown table; return that text."""
    lines = [f"machine: {machine}", "", "| measure | value | note |", "|---|---|---|"]
    table = "\n".join([*lines, *(f"| {' | '.join(row)} |" for row in rows)])
    print(f"\n{table}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--skip-base", action="store_true", help="skip the ~10 min base run")
    args = parser.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="mnistcnn-speed-"))
    # The first optimizer built imports torch._dynamo (~1.5 s): library start-up like `import
    # torch`, paid here so that neither the reference nor fast.yaml is timed with it.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    train = load_mnist(args.data_dir, True, False, default_cache_dir())  # warm the tensor cache
    load_mnist(args.data_dir, False, False, default_cache_dir())
    rows = []

    print("1. time to 99 % test accuracy", flush=True)
    ref, fast = time_to_99(args.data_dir, args.seeds, out_dir)
    accs = [r["test_accuracy"] for r in fast]
    imports = import_seconds()
    waited = statistics.median(r["command"] for r in fast) - imports
    fast_train = statistics.median(r["train_seconds"] for r in fast)
    rows.append(
        (
            "reference: time to 99.0 % (s)",
            f"{ref['seconds']:.1f}",
            f"epoch {ref['epoch']}, {100 * ref['accuracy']:.2f} %",
        )
    )
    rows.append(
        (
            "fast.yaml: median `mnistcnn train` command less imports (s)",
            f"{waited:.1f}",
            f"**{ref['seconds'] / waited:.1f}x** faster (goal >= 22x); "
            f"the imports of torch, torchvision and mnistcnn: {imports:.1f} s",
        )
    )
    rows.append(
        (
            "fast.yaml: median training time (s)",
            f"{fast_train:.1f}",
            f"{ref['seconds'] / fast_train:.1f}x; validation and calibration in, the test out",
        )
    )
    rows.append(
        (
            "fast.yaml: test accuracy, mean / min (%)",
            f"{100 * statistics.mean(accs):.2f} / {100 * min(accs):.2f}",
            f"{len(accs)} seeds: {', '.join(f'{100 * a:.2f}' for a in accs)} "
            "(goal mean >= 99.0, each >= 98.9)",
        )
    )

    if not args.skip_base:
        print("2. base.yaml", flush=True)
        base = run_config(
            "base", args.data_dir, out_dir / "base.pth", f"train.output={out_dir / 'base.pth'}"
        )
        rows.append(
            ("base.yaml: test accuracy (%)", f"{100 * base['test_accuracy']:.2f}", "goal >= 99.5")
        )
        rows.append(
            ("base.yaml: training wall time (s)", f"{base['wall']:.0f}", f"{base['epochs']} epochs")
        )

    print("3. eval throughput", flush=True)
    models = {"fast.yaml's": fast[0]["path"], "the bundled (base.yaml's)": BUNDLED}
    for name, path in models.items():
        rate = eval_throughput(path, args.data_dir)
        ref_rate = rate["reference"]
        rows.append(
            (
                f"eval, {name} model: images/s, reference loop vs `eval` / `eval --amp`",
                f"{ref_rate:,.0f} vs {rate['eval']:,.0f} / {rate['eval --amp']:,.0f}",
                f"{rate['eval'] / ref_rate:.1f}x / {rate['eval --amp'] / ref_rate:.1f}x "
                "(goal >= 5x)",
            )
        )

    ref_data, our_data = data_path_throughput(args.data_dir)
    rows.append(
        (
            "data path alone (no model): training images/s, reference vs mnistcnn",
            f"{ref_data:,.0f} vs {our_data:,.0f}",
            f"{our_data / ref_data:.0f}x (per-sample PIL transforms vs tensor batches)",
        )
    )

    print("4. predict cold start", flush=True)
    torch_s, predict_s = cold_start(fast[0]["path"], args.data_dir)
    rows.append(
        (
            "cold start: import torch vs predict one.png (s)",
            f"{torch_s:.2f} vs {predict_s:.2f}",
            f"+{predict_s - torch_s:.2f} s (goal <= +1.0)",
        )
    )

    print("5. threads and precision", flush=True)
    amp = autocast_dtype(torch.device("cpu"))
    rates = {n: step_throughput("fast", train, n, amp) for n in (1, 2)}
    rows.append(
        (
            "training images/s at 1 / 2 threads",
            f"{rates[1]:,.0f} / {rates[2]:,.0f}",
            f"{rates[2] / rates[1]:.2f}x from the 2nd",
        )
    )
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # else bf16 is emulated: no contest
        threads = torch.get_num_threads()
        for name in ("fast", "base"):
            # Taken in turns, 3 of each, medians: a shared machine's speed drifts within a minute.
            turns = [
                [step_throughput(name, train, threads, t) for t in (None, torch.bfloat16)]
                for _ in range(3)
            ]
            f32, bf16 = (statistics.median(taken) for taken in zip(*turns, strict=True))
            rows.append(
                (
                    f"bf16 against float32: {name}.yaml's model, training images/s",
                    f"{f32:,.0f} vs {bf16:,.0f}",
                    f"bf16 {bf16 / f32:.2f}x float32's speed; "
                    f"train.amp trains in {amp or 'float32'} on this CPU",
                )
            )

    table = print_table(
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"CPU autocast: {amp or 'off (float32: bf16 not faster here)'}",
        rows,
    )
    from page import command_line, copy_section, write_section

    write_section("Speed", command_line(), table)
    copy_section("Speed", ROOT / "README.md", "Results")


if __name__ == "__main__":
    main()
