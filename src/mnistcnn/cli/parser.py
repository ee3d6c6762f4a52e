"""The argument parser: one function per command adds its arguments, each saying what it does;
command NAME runs `commands.cmd_NAME`."""

from __future__ import annotations

import argparse
from argparse import ArgumentParser
from typing import Any

from mnistcnn import __version__
from mnistcnn.cli import commands

DEVICE = "auto, cpu, cuda, cuda:N or mps"
JSON = "print the {} as JSON"
DEFAULT_MODEL = "models/cnn.pth, else the bundled model"
Commands = argparse._SubParsersAction


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], not {value}")
    return value


def _command(sub: Commands, name: str, help: str, handler: str = "") -> ArgumentParser:
    """A subcommand that runs `commands.cmd_<handler or name>(args)`."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(handler=getattr(commands, f"cmd_{handler or name}"))
    return p


def _opt(p: ArgumentParser, usage: str, help: str, **kwargs: Any) -> None:
    """An option from its usage: `--output -o PTH` takes a value, `--quiet -q` is a switch."""
    *names, last = usage.split()
    if not last.startswith("-"):
        kwargs["metavar"] = last
    else:
        names.append(last)
        if "choices" not in kwargs:
            kwargs["action"] = "store_true"
    p.add_argument(*names, help=help, **kwargs)


def _config_args(p: ArgumentParser) -> None:
    """--config, --set and --data-dir: the config a command starts from."""
    _opt(p, "--config -c YAML", "config file (default: the base recipe)")
    sets = "override a config key, e.g. --set train.epochs=3 (repeatable)"
    _opt(p, "--set KEY=VALUE", sets, action="append", default=[])
    _opt(p, "--data-dir DIR", "folder holding MNIST/raw/ (data.root)")


def _train(sub: Commands) -> None:
    p = _command(sub, "train", "train a model from a YAML config")
    _config_args(p)
    _opt(p, "--device DEVICE", f"{DEVICE} (train.device)")
    _opt(p, "--output -o PTH", "where to save the model (train.output)")
    _opt(p, "--overwrite", "replace an existing model file")
    _opt(p, "--run-name NAME", "the run folder's name before its time (train.run_name)")
    _opt(p, "--run-dir DIR", "where run folders go, '' for none (train.run_dir, default runs)")
    _opt(p, "--resume CKPT", "continue an interrupted run (its .ckpt, .pth or folder)")
    nproc = "train in N processes on this machine (DistributedDataParallel via torchrun)"
    _opt(p, "--nproc N", nproc, type=_positive_int, default=1)
    restarts = "with --nproc: restart all processes up to K times if one fails, resuming"
    _opt(p, "--max-restarts K", restarts, type=_non_negative_int, default=0)
    _opt(p, "--init-from PTH", "start from this model's weights (train.init_from)")
    freeze = "train only the classifier (train.freeze)"
    _opt(p, "--freeze", freeze, choices=("none", "features"))
    _opt(p, "--quiet -q", "no progress bars")
    _opt(p, "--json", JSON.format("result"))


def _model_on_mnist_args(p: ArgumentParser, json_help: str) -> None:
    """The options of the commands that run a model over MNIST (eval, calibrate)."""
    _opt(p, "--data-dir DIR", "folder holding MNIST/raw/", default="data")
    _opt(p, "--no-download", "never try to download MNIST")
    batch = "images per batch (default 0: sized to the CPU's caches, 1000 on a GPU)"
    _opt(p, "--batch-size N", batch, type=_non_negative_int, default=0)
    _opt(p, "--device DEVICE", f"{DEVICE} (default auto)")
    _opt(p, "--json", json_help)


def _eval(sub: Commands) -> None:
    p = _command(sub, "eval", "test-set accuracy and per-class metrics of a model or ensemble")
    models = f"model files; several: their ensemble (default {DEFAULT_MODEL})"
    p.add_argument("models", nargs="*", metavar="MODEL.pth", help=models)
    _model_on_mnist_args(p, JSON.format("report"))
    _opt(p, "--save-confusion PNG", "also draw the confusion matrix as a PNG")
    _opt(p, "--tta", "also measure test-time augmentation (logits averaged over 7 small moves)")
    amp = (
        "bfloat16/float16 autocast where the device runs it natively: ~1.6x faster on such "
        "CPUs, but a few borderline answers may differ from the float32 ones"
    )
    _opt(p, "--amp", amp)
    about = "fit the temperature on the validation split and store it in the model"
    p = _command(sub, "calibrate", about)
    p.add_argument("model", metavar="MODEL.pth", help="the model file")
    _model_on_mnist_args(p, JSON.format("result"))


def _predict(sub: Commands) -> None:
    p = _command(sub, "predict", "classify image files of handwritten digits")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    model = f"a .pth or .onnx model (default {DEFAULT_MODEL}); repeated: an ensemble of .pth"
    _opt(p, "--model -m MODEL.pth", model, action="append")
    top_k = "show the K most likely digits (default 1)"
    _opt(p, "--top-k -k K", top_k, type=int, default=1, choices=range(1, 11))
    _opt(p, "--json", JSON.format("results"))
    explain = (
        "with --save-preprocessed: an occlusion map of the pixels that drove each answer "
        "(NAME.explain.png)"
    )
    _opt(p, "--explain", explain)
    saved = (
        "write the 28x28 image the model saw (NAME.png) and a picture of every preprocessing "
        "step (NAME.steps.png), per file"
    )
    _opt(p, "--save-preprocessed DIR", saved)
    _opt(p, "--multi", "read several digits in a row (a year, a phone number) as one number")
    low = "mark answers whose calibrated probability is below P as low confidence (0.5)"
    _opt(p, "--min-confidence P", low, type=_probability, default=0.5)
    tta = "test-time augmentation: average 7 slightly moved copies of each digit (.pth only)"
    _opt(p, "--tta", tta)


def _serve(sub: Commands) -> None:
    p = _command(sub, "serve", "web page and HTTP API: draw a digit, see the prediction")
    _opt(p, "--model -m MODEL.pth", f"the model to serve (default {DEFAULT_MODEL})")
    _opt(p, "--host HOST", "address to listen on (default: loopback only)", default="127.0.0.1")
    _opt(p, "--port PORT", "TCP port (0: any free one)", type=int, default=8000)


def _export(sub: Commands) -> None:
    p = _command(sub, "export", "write a model as ONNX or TorchScript (fused, int8)")
    p.add_argument("model", metavar="MODEL.pth", help="the model to export")
    _opt(p, "--format -f", "the file format", required=True, choices=("onnx", "torchscript"))
    _opt(p, "--output -o OUT", "file to write", required=True)
    _opt(p, "--fuse", "fold each BatchNorm into its conv/linear")
    _opt(p, "--quantize", "static post-training int8 (needs --data-dir)", choices=("int8",))
    _opt(p, "--data-dir DIR", "MNIST/raw/ folder: int8 calibration, test-set check")
    _opt(p, "--calibration N", "training images for int8", type=int, default=1000)
    _opt(p, "--overwrite", "replace an existing output file")
    _opt(p, "--json", JSON.format("report"))


def _report(sub: Commands) -> None:
    p = _command(sub, "report", "a run's pictures (PNG) and one report.html")
    p.add_argument("run", metavar="RUN_DIR_OR_MODEL", help="a run folder or a model .pth")
    _opt(p, "--output -o DIR", "where to write (default RUN/report/)")
    _opt(p, "--data-dir DIR", "MNIST/raw/ folder (default: the run's)")
    p = _command(sub, "compare", "a table of runs and their validation curves overlaid")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or model .pth files")
    _opt(p, "--plot PNG", "the overlay (default compare.png)", default="compare.png")
    _opt(p, "--json", JSON.format("table"))


def _tune(sub: Commands) -> None:
    p = _command(sub, "tune", "hyperparameter search with Optuna (resumable, parallel)")
    _opt(p, "--config -c YAML", "a training config + search section", required=True)
    sets = "override a key, e.g. --set train.threads=1 or --set search.n_trials=30"
    _opt(p, "--set KEY=VALUE", sets, action="append", default=[])
    _opt(p, "--data-dir DIR", "folder holding MNIST/raw/ (data.root)")
    _opt(p, "--jobs -j N", "worker processes", type=int, default=1)
    _opt(p, "--study NAME", "study name and run folder (search.study)")
    _opt(p, "--storage URL", "shared study database (default: SQLite in the run folder)")
    _opt(p, "--n-trials N", "trials in the whole study", type=int)
    _opt(p, "--timeout S", "seconds for this run", type=float)
    _opt(p, "--device DEVICE", f"{DEVICE} (train.device)")
    _opt(p, "--quiet -q", "no per-epoch lines")
    _opt(p, "--json", JSON.format("report"))


def _inspect(sub: Commands) -> None:
    """`config show` and `model show`."""
    for group, about, show in (
        ("config", "inspect configs", "print the resolved config"),
        (
            "model",
            "inspect the network a config builds",
            "layer table: output shapes and parameter counts",
        ),
    ):
        actions = sub.add_parser(group, help=about).add_subparsers(
            dest=f"{group}_command", required=True, metavar="ACTION"
        )
        p = _command(actions, "show", show, f"{group}_show")
        _config_args(p)
    _opt(p, "--json", JSON.format("rows"))


def build_parser() -> ArgumentParser:
    """The argument parser for every subcommand."""
    parser = ArgumentParser(
        prog="mnistcnn", description="Train, evaluate and use CNNs on handwritten digits (MNIST)."
    )
    parser.add_argument("--version", action="version", version=f"mnistcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_train, _eval, _predict, _serve, _export, _report, _tune):
        add(sub)
    _inspect(sub)
    return parser
