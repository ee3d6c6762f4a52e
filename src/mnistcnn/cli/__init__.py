"""The `mnistcnn` command: argparse subcommands with thin handlers over the library.

Exit codes: 0 success, 1 a MnistCnnError (one line on stderr), 2 a usage error, 130 Ctrl-C.
Heavy modules are imported inside the handlers, so `predict` never loads torchvision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mnistcnn import __version__
from mnistcnn.errors import ConfigError, MnistCnnError


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _stdout(text: str) -> None:
    print(text, flush=True)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set)
    if getattr(args, "data_dir", None):
        sets.append(f"data.root={json.dumps(args.data_dir)}")
    if getattr(args, "device", None):
        sets.append(f"train.device={args.device}")
    if getattr(args, "output", None):
        sets.append(f"train.output={json.dumps(args.output)}")
    if getattr(args, "run_name", None):
        sets.append(f"train.run_name={json.dumps(args.run_name)}")
    if getattr(args, "run_dir", None) is not None:
        sets.append(f"train.run_dir={json.dumps(args.run_dir or None)}")
    if getattr(args, "init_from", None):
        sets.append(f"train.init_from={json.dumps(args.init_from)}")
    if getattr(args, "freeze", None):
        sets.append(f"train.freeze={args.freeze}")
    return sets


def cmd_train(args: argparse.Namespace) -> int:
    from mnistcnn.checkpoint import load_training_state
    from mnistcnn.config import from_dict, load_config, replace_config
    from mnistcnn.train import check_output, distributed, fit, output_paths

    state = None
    world = distributed.from_env()
    resume = args.resume
    if not resume and world.distributed and distributed.restarted():
        # torchrun started the processes again after one failed: go on from the last epoch.
        checkpoint = output_paths(load_config(args.config, _overrides(args)))["checkpoint"]
        resume = str(checkpoint) if checkpoint.is_file() else None
    if resume:
        if args.resume and (args.config or args.set or args.output):
            raise ConfigError(
                "--resume continues a run with its saved config: drop --config/--set/-o"
            )
        state = load_training_state(resume)
        # The model goes beside its checkpoint, wherever the run is resumed from.
        output = Path(state["path"]).with_suffix(".pth")
        sets = [*_overrides(args), f"train.output={json.dumps(str(output))}"]
        cfg = replace_config(from_dict(state["config"]), sets)
    else:
        cfg = load_config(args.config, _overrides(args))
    if args.nproc > 1 and not world.distributed:
        # Checked once here rather than once per process.
        check_output(cfg, args.overwrite or state is not None)
        checkpoint = output_paths(cfg)["checkpoint"]
        return distributed.launch(args.nproc, args.argv, checkpoint, args.max_restarts)
    log = _stderr if args.json else _stdout
    progress = not args.quiet and sys.stderr.isatty()
    result = fit(cfg, overwrite=args.overwrite, progress=progress, log=log, resume=state)
    if not result:  # a process other than rank 0 of a distributed run: rank 0 reports
        return 0
    if args.json:
        _print_json(result)
    else:
        _stdout(
            f"test accuracy {100 * result['test_accuracy']:.2f} %  (best epoch {result['epoch']})"
        )
        _stdout(
            f"temperature {result['temperature']:.4f}: validation ECE "
            f"{100 * result['val_ece']:.2f} % -> {100 * result['val_ece_calibrated']:.2f} %"
        )
        _stdout(f"saved {result['model']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mnistcnn.calibrate import evaluate_calibration, format_calibration
    from mnistcnn.checkpoint import load_model
    from mnistcnn.data import default_cache_dir, load_mnist
    from mnistcnn.metrics import classification_report, format_report
    from mnistcnn.model import fuse
    from mnistcnn.train import predict_logits, resolve_device

    device = resolve_device(args.device or "auto", "--device")
    # BatchNorm folded into the convolutions: the same logits (within 1e-5), faster.
    model = fuse(load_model(args.model, device)).to(memory_format=torch.channels_last)
    data = {"download": not args.no_download}
    test = load_mnist(args.data_dir, train=False, cache=default_cache_dir(), **data).to(device)
    logits = predict_logits(model, test, args.batch_size, device, amp=args.amp, channels_last=True)
    report = classification_report(logits, test.labels)
    report["calibration"] = evaluate_calibration(
        model,
        args.model,
        test,
        logits,
        args.data_dir,
        **data,
        batch_size=args.batch_size,
        use_tta=args.tta,
    )
    lines = [format_report(report), "", *format_calibration(report["calibration"])]
    _print_json(report) if args.json else _stdout("\n".join(lines))
    if args.save_confusion:
        from mnistcnn.report import figures

        figures.save(figures.confusion(np.array(report["confusion"])), args.save_confusion)
        _stderr(f"saved {args.save_confusion}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mnistcnn.calibrate import fit_on_validation
    from mnistcnn.checkpoint import load_model, save_model
    from mnistcnn.train import resolve_device

    model = load_model(args.model, resolve_device(args.device or "auto", "--device"))
    fitted, split = fit_on_validation(
        model, args.model, args.data_dir, download=not args.no_download, batch_size=args.batch_size
    )
    model.meta = {**model.meta, **fitted}
    save_model(model, args.model)
    if args.json:
        _print_json({**fitted, "split": split, "model": args.model})
        return 0
    _stdout(
        f"temperature {fitted['temperature']:.4f} (with --tta {fitted['tta_temperature']:.4f}), "
        f"fitted on {split}"
    )
    _stdout(
        f"validation ECE {100 * fitted['val_ece']:.2f} % -> "
        f"{100 * fitted['val_ece_calibrated']:.2f} %; saved in {args.model}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    onnx = Path(args.model).suffix.lower() == ".onnx"
    if args.explain and not args.save_preprocessed:
        raise ConfigError("--explain needs --save-preprocessed DIR: the maps go beside the views")
    if args.explain and (args.multi or onnx):
        raise ConfigError("--explain works on single digits with a .pth model")
    if args.tta and onnx:
        raise ConfigError("--tta works with a .pth model (its views need torch)")
    if args.multi and onnx:
        raise MnistCnnError("--multi reads numbers with a .pth model, not an .onnx one")
    if onnx:  # onnxruntime: torch is never imported
        from mnistcnn.predict.onnx import load_onnx, predict_paths

        model: Any = load_onnx(args.model)
        calibrated = model.temperature is not None
    else:
        from mnistcnn.calibrate import stored_temperatures
        from mnistcnn.checkpoint import load_model
        from mnistcnn.predict.classify import predict_numbers, predict_paths

        model = load_model(args.model)
        calibrated = stored_temperatures(model.meta) is not None
    options: dict[str, Any] = {
        "top_k": args.top_k,
        "save_dir": args.save_preprocessed,
        "min_confidence": args.min_confidence,
    }
    if args.multi:
        found: Iterable[Any] = predict_numbers(model, args.images, **options, use_tta=args.tta)
    else:
        found = predict_paths(model, args.images, **options, use_tta=args.tta)
    results = _show(found, args, _number_line if args.multi else _label_line)
    _note_uncalibrated(calibrated, results, args.model)
    if args.explain:
        from mnistcnn.predict.explain import explain_predictions

        for path in explain_predictions(model, results, args.save_preprocessed):
            _stderr(f"saved {path}")
    return _finish(results, args)


def _note_uncalibrated(calibrated: bool, results: list, model: str) -> None:
    """After any answer from a model without a temperature: say its p is not calibrated."""
    if not calibrated and any(not p.error for p in results):
        _stderr(
            f"mnistcnn: note: {model} has no stored temperature, so its probabilities are the "
            f"raw softmax (uncalibrated); store one with: mnistcnn calibrate {model}"
        )


def _confidence(p: Any) -> str:
    """`(p=0.981)`, or `(p=0.412, low confidence)` under --min-confidence."""
    return f"(p={p.probability:.3f}{', low confidence' if p.low_confidence else ''})"


def _label_line(p: Any) -> str:
    others = "  ".join(f"{k} ({v:.3f})" for k, v in p.top[1:])
    return f"{p.path}: {p.label}  {_confidence(p)}  {others}".rstrip()


def _number_line(p: Any) -> str:
    digits = "  ".join(_digit_text(top) for top in p.digits)
    return f"{p.path}: {p.number}  {_confidence(p)}  {digits}"


def _show(found: Iterable[Any], args: argparse.Namespace, line: Callable[[Any], str]) -> list:
    """Print each answer as it comes (errors on stderr); collect them all."""
    results = []
    for p in found:
        results.append(p)
        if p.error:
            _stderr(f"mnistcnn: error: {p.error}")
        elif not args.json:
            _stdout(line(p))
    return results


def _finish(results: list, args: argparse.Namespace) -> int:
    """JSON output if asked; exit 1 when any file failed or none was found."""
    if not results:
        raise MnistCnnError(f"no image files found in {', '.join(args.images)}")
    if args.json:
        _print_json([dataclasses.asdict(p) for p in results])
    return 1 if any(p.error for p in results) else 0


def _digit_text(top: list[tuple[int, float]]) -> str:
    """`7 (0.981)`, or with --top-k `7 (0.981; 1 0.012; 2 0.004)`."""
    others = "".join(f"; {k} {v:.3f}" for k, v in top[1:])
    return f"{top[0][0]} ({top[0][1]:.3f}{others})"


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mnistcnn.serve import serve
    except ModuleNotFoundError as exc:
        if exc.name not in {"fastapi", "uvicorn", "multipart", "python_multipart", "starlette"}:
            raise
        raise MnistCnnError(f"serve needs {exc.name}: pip install 'mnistcnn[serve]'") from None
    serve(args.model, args.host, args.port, log=_stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mnistcnn.export import export_model, format_report

    report = export_model(
        args.model,
        args.output,
        fmt=args.format,
        fuse_bn=args.fuse,
        quantize=args.quantize,
        data_dir=args.data_dir,
        calibration=args.calibration,
        overwrite=args.overwrite,
    )
    _print_json(dataclasses.asdict(report)) if args.json else _stdout(format_report(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mnistcnn.report import report

    written = report(args.run, args.output, args.data_dir)
    _stdout(f"wrote {len(written) - 1} pictures and {written['html']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mnistcnn.report import compare, format_compare

    table = compare(args.runs, args.plot)
    _print_json(table) if args.json else _stdout(format_compare(table))
    _stderr(f"saved {args.plot}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from mnistcnn.tune import format_report, load_tune_config, run_study

    sets = [*_overrides(args), *(f"search.{k}={v}" for k, v in _tune_flags(args).items())]
    report = run_study(load_tune_config(args.config, sets), jobs=args.jobs, quiet=args.quiet)
    _print_json(dataclasses.asdict(report)) if args.json else _stdout(format_report(report))
    return 0


def _tune_flags(args: argparse.Namespace) -> dict[str, str]:
    flags = {"study": args.study, "storage": args.storage, "n_trials": args.n_trials}
    flags["timeout"] = args.timeout
    return {k: json.dumps(v) for k, v in flags.items() if v is not None}


def cmd_config_show(args: argparse.Namespace) -> int:
    from mnistcnn.config import dump, load_config

    print(dump(load_config(args.config, _overrides(args))), end="")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from mnistcnn.config import load_config
    from mnistcnn.model import build_model, format_layer_table, layer_table

    cfg = load_config(args.config, _overrides(args))
    model = build_model(cfg.model.name, dict(cfg.model.kwargs), cfg.data.mean, cfg.data.std)
    _print_json(layer_table(model)) if args.json else _stdout(format_layer_table(model))
    return 0


BATCH_HELP = "images per batch (default 0: sized to the CPU's caches, 1000 on a GPU)"


def _model_on_mnist_args(parser: argparse.ArgumentParser, json_help: str) -> None:
    """The arguments of the commands that run a model over MNIST (eval, calibrate)."""
    parser.add_argument("model", metavar="MODEL.pth")
    parser.add_argument(
        "--data-dir", default="data", metavar="DIR", help="folder holding MNIST/raw/"
    )
    parser.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    parser.add_argument(
        "--batch-size", type=_non_negative_int, default=0, metavar="N", help=BATCH_HELP
    )
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--json", action="store_true", help=json_help)


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


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="YAML", help="config file (default: the base recipe)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="folder holding MNIST/raw/ (data.root)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mnistcnn", description="Train, evaluate and use CNNs on handwritten digits (MNIST)."
    )
    parser.add_argument("--version", action="version", version=f"mnistcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model from a YAML config")
    _add_config_args(train)
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (train.device)")
    train.add_argument(
        "--output", "-o", metavar="PTH", help="where to save the model (train.output)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    train.add_argument(
        "--run-name", metavar="NAME", help="the run folder's name before its time (train.run_name)"
    )
    train.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where run folders go, '' for none (train.run_dir, default runs)",
    )
    train.add_argument(
        "--resume", metavar="CKPT", help="continue an interrupted run (its .ckpt, .pth or folder)"
    )
    train.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (DistributedDataParallel via torchrun)",
    )
    train.add_argument(
        "--max-restarts",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="with --nproc: restart all processes up to K times if one fails, resuming",
    )
    train.add_argument(
        "--init-from", metavar="PTH", help="start from this model's weights (train.init_from)"
    )
    train.add_argument(
        "--freeze", choices=("none", "features"), help="train only the classifier (train.freeze)"
    )
    train.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(handler=cmd_train)

    ev = sub.add_parser("eval", help="test-set accuracy and per-class metrics of a model")
    _model_on_mnist_args(ev, json_help="print the report as JSON")
    ev.add_argument(
        "--save-confusion", metavar="PNG", help="also draw the confusion matrix as a PNG"
    )
    ev.add_argument(
        "--tta",
        action="store_true",
        help="also measure test-time augmentation (logits averaged over 7 small moves)",
    )
    ev.add_argument(
        "--amp",
        action="store_true",
        help="bfloat16/float16 autocast where the device runs it natively: ~1.6x faster on "
        "such CPUs, but a few borderline answers may differ from the float32 ones",
    )
    ev.set_defaults(handler=cmd_eval)

    ca = sub.add_parser(
        "calibrate", help="fit the temperature on the validation split and store it in the model"
    )
    _model_on_mnist_args(ca, json_help="print the result as JSON")
    ca.set_defaults(handler=cmd_calibrate)

    pr = sub.add_parser("predict", help="classify image files of handwritten digits")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    pr.add_argument("--model", "-m", default="models/cnn.pth", metavar="MODEL.pth")
    pr.add_argument("--top-k", "-k", type=int, default=1, choices=range(1, 11), metavar="K")
    pr.add_argument("--json", action="store_true", help="print the results as JSON")
    pr.add_argument(
        "--explain",
        action="store_true",
        help="with --save-preprocessed: an occlusion map of the pixels that drove each answer "
        "(NAME.explain.png)",
    )
    pr.add_argument(
        "--save-preprocessed",
        metavar="DIR",
        help="write the 28x28 image the model saw (NAME.png) and a picture of every "
        "preprocessing step (NAME.steps.png), per file",
    )
    pr.add_argument(
        "--multi",
        action="store_true",
        help="read several digits in a row (a year, a phone number) as one number",
    )
    pr.add_argument(
        "--min-confidence",
        type=_probability,
        default=0.5,
        metavar="P",
        help="mark answers whose calibrated probability is below P as low confidence (0.5)",
    )
    pr.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average 7 slightly moved copies of each digit (.pth only)",
    )
    pr.set_defaults(handler=cmd_predict)

    sv = sub.add_parser("serve", help="web page and HTTP API: draw a digit, see the prediction")
    sv.add_argument("--model", "-m", default="models/cnn.pth", metavar="MODEL.pth")
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback only)"
    )
    sv.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one)")
    sv.set_defaults(handler=cmd_serve)

    ex = sub.add_parser("export", help="write a model as ONNX or TorchScript (fused, int8)")
    ex.add_argument("model", metavar="MODEL.pth")
    ex.add_argument("--format", "-f", required=True, choices=("onnx", "torchscript"))
    ex.add_argument("--output", "-o", required=True, metavar="OUT", help="file to write")
    ex.add_argument("--fuse", action="store_true", help="fold each BatchNorm into its conv/linear")
    ex.add_argument(
        "--quantize", choices=("int8",), help="static post-training int8 (needs --data-dir)"
    )
    ex.add_argument(
        "--data-dir", metavar="DIR", help="MNIST/raw/ folder: int8 calibration, test-set check"
    )
    ex.add_argument(
        "--calibration", type=int, default=1000, metavar="N", help="training images for int8"
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ex.add_argument("--json", action="store_true", help="print the report as JSON")
    ex.set_defaults(handler=cmd_export)

    rp = sub.add_parser("report", help="a run's pictures (PNG) and one report.html")
    rp.add_argument("run", metavar="RUN_DIR_OR_MODEL", help="a run folder or a model .pth")
    rp.add_argument("--output", "-o", metavar="DIR", help="where to write (default RUN/report/)")
    rp.add_argument("--data-dir", metavar="DIR", help="MNIST/raw/ folder (default: the run's)")
    rp.set_defaults(handler=cmd_report)

    cp = sub.add_parser("compare", help="a table of runs and their validation curves overlaid")
    cp.add_argument("runs", nargs="+", metavar="RUN", help="run folders or model .pth files")
    cp.add_argument(
        "--plot", default="compare.png", metavar="PNG", help="the overlay (default compare.png)"
    )
    cp.add_argument("--json", action="store_true", help="print the table as JSON")
    cp.set_defaults(handler=cmd_compare)

    tu = sub.add_parser("tune", help="hyperparameter search with Optuna (resumable, parallel)")
    tu.add_argument(
        "--config", "-c", required=True, metavar="YAML", help="a training config + search section"
    )
    tu.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set train.threads=1 or --set search.n_trials=30",
    )
    tu.add_argument("--data-dir", metavar="DIR", help="folder holding MNIST/raw/ (data.root)")
    tu.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help="worker processes")
    tu.add_argument("--study", metavar="NAME", help="study name and run folder (search.study)")
    tu.add_argument(
        "--storage", metavar="URL", help="shared study database (default: SQLite in the run folder)"
    )
    tu.add_argument("--n-trials", type=int, metavar="N", help="trials in the whole study")
    tu.add_argument("--timeout", type=float, metavar="S", help="seconds for this run")
    tu.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (train.device)")
    tu.add_argument("--quiet", "-q", action="store_true", help="no per-epoch lines")
    tu.add_argument("--json", action="store_true", help="print the report as JSON")
    tu.set_defaults(handler=cmd_tune)

    cfg = sub.add_parser("config", help="inspect configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    show.set_defaults(handler=cmd_config_show)

    mdl = sub.add_parser("model", help="inspect the network a config builds")
    mdl_sub = mdl.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    mshow = mdl_sub.add_parser("show", help="layer table: output shapes and parameter counts")
    _add_config_args(mshow)
    mshow.add_argument("--json", action="store_true", help="print the rows as JSON")
    mshow.set_defaults(handler=cmd_model_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (2)
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return handler(args)
    except MnistCnnError as exc:
        _stderr(f"mnistcnn: error: {exc}")
        return 1
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # one line for a distributed run, not N
            _stderr("mnistcnn: interrupted")
        return 130
