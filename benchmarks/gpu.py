"""What mnistcnn does on a CUDA GPU: every figure timed in this one run, on the same GPU as the
baseline timed beside it.

    python benchmarks/gpu.py --data-dir ../shared/data [--seeds 3] [--skip-base]

1. Time to 99 %: the common PyTorch example's recipe (benchmarks/reference.py, each batch copied
   to the GPU as the example's --cuda does) vs configs/fast.yaml on the GPU over several seeds
   (each step after the third replayed as a CUDA graph, bf16 autocast: the defaults), then seed
   0 with eager steps, in float32, and with torch.compile.
2. The same seed twice: are the GPU's weights bitwise equal, as the CPU's are?
3. configs/base.yaml on the GPU: test accuracy and training time.
4. Eval throughput: the example's test loop vs `mnistcnn eval`'s path, both on the GPU.
A short warm-up run comes first, so that no timed run pays for CUDA's start-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference
from speed import eval_throughput, print_table, run_config

from mnistcnn.checkpoint import load_model
from mnistcnn.data import default_cache_dir, load_mnist
from mnistcnn.train.build import autocast_dtype

ROOT = Path(__file__).resolve().parents[1]


def max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two models' weights and buffers."""
    first, second = load_model(a).state_dict(), load_model(b).state_dict()
    tensors = [k for k, v in first.items() if isinstance(v, torch.Tensor)]  # not the extra state
    return max((first[k].double() - second[k].double()).abs().max().item() for k in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-base", action="store_true", help="skip the base.yaml run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device here (benchmarks/speed.py measures the CPU)")
    device = torch.device("cuda")
    out = Path(tempfile.mkdtemp(prefix="mnistcnn-gpu-"))
    load_mnist(args.data_dir, True, False, default_cache_dir())  # warm the tensor cache
    load_mnist(args.data_dir, False, False, default_cache_dir())

    def fast(name: str, *sets: str) -> dict:
        path = out / name
        return run_config(
            "fast", args.data_dir, path, "train.device=cuda", f"train.output={path}", *sets
        )

    fast("warm-up.pth", "train.epochs=1", "data.subset=5000")
    print("1. time to 99 % test accuracy", flush=True)
    for ref in reference.train_until(args.data_dir, 0.99, max_epochs=8, device=device):
        print(f"  reference epoch {ref['epoch']}: {100 * ref['accuracy']:.2f} %", flush=True)
    runs = [fast(f"fast-{seed}.pth", f"train.seed={seed}") for seed in range(args.seeds)]
    amp = str(autocast_dtype(device)).removeprefix("torch.")
    seconds = statistics.median(r["train_seconds"] for r in runs)
    accs = [100 * r["test_accuracy"] for r in runs]
    eager = fast("eager.pth", "train.cuda_graphs=false")
    fp32 = fast("fp32.pth", "train.amp=false")
    compiled = fast("compiled.pth", "train.compile=true")
    rows = [
        (
            "reference: time to 99.0 % (s)",
            f"{ref['seconds']:.1f}",
            f"epoch {ref['epoch']}, {100 * ref['accuracy']:.2f} %",
        ),
        (
            f"fast.yaml, {args.seeds} seeds, {amp} autocast: median training time (s)",
            f"{seconds:.2f}",
            f"{ref['seconds'] / seconds:.1f}x faster; test "
            + ", ".join(f"{a:.2f}" for a in accs)
            + " %",
        ),
    ]
    variants = (
        ("eager steps, no CUDA graph (train.cuda_graphs=false)", eager),
        ("float32 (train.amp=false)", fp32),
        ("train.compile=true", compiled),
    )
    for label, run in variants:
        rows.append(
            (
                f"fast.yaml, seed 0, {label}: training time (s)",
                f"{run['train_seconds']:.2f}",
                f"{ref['seconds'] / run['train_seconds']:.1f}x; "
                f"test {100 * run['test_accuracy']:.2f} %",
            )
        )

    print("2. the same seed twice", flush=True)
    again = fast("again.pth", "train.seed=0")
    diff = max_difference(runs[0]["path"], again["path"])
    rows.append(
        (
            "fast.yaml seed 0 twice: largest weight difference",
            f"{diff:.3g}",
            "bitwise equal" if diff == 0 else "not bitwise (cuDNN's kernels are not deterministic)",
        )
    )

    models = {"fast.yaml's": runs[0]["path"]}
    if not args.skip_base:
        print("3. base.yaml", flush=True)
        path = out / "base.pth"
        base = run_config("base", args.data_dir, path, "train.device=cuda", f"train.output={path}")
        rows.append(
            (
                "base.yaml: test accuracy (%) / training wall time (s)",
                f"{100 * base['test_accuracy']:.2f} / {base['wall']:.0f}",
                f"{base['epochs']} epochs",
            )
        )
        models["base.yaml's"] = path

    print("4. eval throughput", flush=True)
    for name, path in models.items():
        rate = eval_throughput(path, args.data_dir, device=device)
        rows.append(
            (
                f"eval, {name} model: images/s, reference loop vs `eval` / `eval --amp`",
                f"{rate['reference']:,.0f} vs {rate['eval']:,.0f} / {rate['eval --amp']:,.0f}",
                f"{rate['eval'] / rate['reference']:.1f}x / "
                f"{rate['eval --amp'] / rate['reference']:.1f}x",
            )
        )

    table = print_table(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, {torch.get_num_threads()} CPU threads",
        rows,
    )
    from page import command_line, copy_section, write_section

    write_section("GPU", command_line(), table)
    copy_section("GPU", ROOT / "README.md", "On a GPU")


if __name__ == "__main__":
    main()
