"""One thin handler per command: parsed arguments -> library call -> printed result (results on
stdout; notes and per-file errors on stderr). Heavy modules are imported inside the handlers, so
`predict` never loads torchvision."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mnistcnn.errors import ConfigError, MnistCnnError


def stdout(text: str) -> None:
    print(text, flush=True)


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _overrides(args: argparse.Namespace) -> list[str]:
    """`--set` plus the flags that are shorthands for a config key, as `key=value` overrides."""
    sets = list(args.set)
    if getattr(args, "data_dir", None):
        sets.append(f"data.root={json.dumps(args.data_dir)}")
    for flag in ("output", "run_name", "init_from", "freeze"):  # train.<flag>, as JSON
        if getattr(args, flag, None):
            sets.append(f"train.{flag}={json.dumps(getattr(args, flag))}")
    if getattr(args, "device", None):
        sets.append(f"train.device={args.device}")
    if getattr(args, "run_dir", None) is not None:  # '' for no run folder
        sets.append(f"train.run_dir={json.dumps(args.run_dir or None)}")
    return sets


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    """The result as JSON with --json, else as text (both on stdout)."""
    if args.json:
        print_json(data)
    else:
        stdout(text)


def _models(given: list[str] | None) -> list[str]:
    """The model files given, each once (several: an ensemble), else the default (noted)."""
    if not given:
        from mnistcnn.bundled import default_model

        path, note = default_model()
        stderr(note)
        given = [str(path)]
    if len({Path(p).resolve() for p in given}) < len(given):
        raise ConfigError(f"a model is given twice: {' '.join(given)}")
    return given


def cmd_train(args: argparse.Namespace) -> int:
    from mnistcnn.checkpoint import load_training_state
    from mnistcnn.config.build import from_dict, load_config, replace_config
    from mnistcnn.train import distributed
    from mnistcnn.train.fitting import check_output, fit, output_paths

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
        model = Path(state["path"]).with_suffix(".pth")
        sets = [*_overrides(args), f"train.output={json.dumps(str(model))}"]
        cfg = replace_config(from_dict(state["config"]), sets)
    else:
        cfg = load_config(args.config, _overrides(args))
    if args.nproc > 1 and not world.distributed:
        # Checked once here rather than once per process.
        check_output(cfg, args.overwrite or state is not None)
        checkpoint = output_paths(cfg)["checkpoint"]
        return distributed.launch(args.nproc, args.argv, checkpoint, args.max_restarts)
    progress = not args.quiet and sys.stderr.isatty()
    result = fit(cfg, overwrite=args.overwrite, progress=progress, resume=state)
    if not result:  # a process other than rank 0 of a distributed run: rank 0 reports
        return 0
    _print(
        args,
        result,
        f"test accuracy {100 * result['test_accuracy']:.2f} %  "
        f"({cfg.train.keep} epoch {result['epoch']})\n"
        f"temperature {result['temperature']:.4f}: validation ECE "
        f"{100 * result['val_ece']:.2f} % -> {100 * result['val_ece_calibrated']:.2f} %\n"
        f"saved {result['model']}",
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mnistcnn.calibrate import format_calibration
    from mnistcnn.evaluate import evaluate_models, format_ensemble
    from mnistcnn.metrics import format_metrics
    from mnistcnn.train.build import resolve_device

    paths = _models(args.models)
    device = resolve_device(args.device or "auto", "--device")
    how = {"download": not args.no_download, "batch_size": args.batch_size, "amp": args.amp}
    report = evaluate_models(paths, args.data_dir, device, use_tta=args.tta, **how)
    lines = [format_metrics(report), ""]
    if "ensemble" in report:
        lines += format_ensemble(report["ensemble"], report["accuracy"])
    else:
        lines += format_calibration(report["calibration"])
    _print(args, report, "\n".join(lines))
    if args.save_confusion:
        import numpy as np

        from mnistcnn.report import figures

        figures.save(figures.confusion(np.array(report["confusion"])), args.save_confusion)
        stderr(f"saved {args.save_confusion}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mnistcnn.calibrate import fit_on_validation
    from mnistcnn.checkpoint import load_model, save_model
    from mnistcnn.train.build import resolve_device

    model = load_model(args.model, resolve_device(args.device or "auto", "--device"))
    fitted, split = fit_on_validation(
        model, args.model, args.data_dir, download=not args.no_download, batch_size=args.batch_size
    )
    model.meta = {**model.meta, **fitted}
    save_model(model, args.model)
    _print(
        args,
        {**fitted, "split": split, "model": args.model},
        f"temperature {fitted['temperature']:.4f} (with --tta {fitted['tta_temperature']:.4f}"
        f"), fitted on {split}\nvalidation ECE {100 * fitted['val_ece']:.2f} % -> "
        f"{100 * fitted['val_ece_calibrated']:.2f} %; saved in {args.model}",
    )
    return 0


def _confidence(p: Any) -> str:
    """`(p=0.981)`, or `(p=0.412, low confidence)` under --min-confidence."""
    return f"(p={p.probability:.3f}{', low confidence' if p.low_confidence else ''})"


def _label_line(p: Any) -> str:
    others = "  ".join(f"{k} ({v:.3f})" for k, v in p.top[1:])
    return f"{p.path}: {p.label}  {_confidence(p)}  {others}".rstrip()


def _number_line(p: Any) -> str:
    """The number, then per digit `7 (0.981)`, or with --top-k `7 (0.981; 1 0.012; 2 0.004)`."""
    digits = "  ".join(
        f"{top[0][0]} ({top[0][1]:.3f}{''.join(f'; {k} {v:.3f}' for k, v in top[1:])})"
        for top in p.digits
    )
    return f"{p.path}: {p.number}  {_confidence(p)}  {digits}"


def _check_predict_flags(args: argparse.Namespace, onnx: bool) -> None:
    """Refuse flags that need what the model cannot give (torch, single digits, a save folder)."""
    if args.explain and not args.save_preprocessed:
        raise ConfigError("--explain needs --save-preprocessed DIR: the maps go beside the views")
    if args.explain and (args.multi or onnx):
        raise ConfigError("--explain works on single digits with a .pth model")
    if args.tta and onnx:
        raise ConfigError("--tta works with a .pth model (its views need torch)")
    if args.multi and onnx:
        raise MnistCnnError("--multi reads numbers with a .pth model, not an .onnx one")


def _note_uncalibrated(raw: list[str], results: list) -> None:
    """After any answer from a model without a temperature: say its p is not calibrated."""
    if raw and any(not p.error for p in results):
        has, its = ("has", "its") if len(raw) == 1 else ("have", "their")
        fix = "; ".join(f"mnistcnn calibrate {path}" for path in raw)
        stderr(
            f"mnistcnn: note: {', '.join(raw)} {has} no stored temperature, so {its} "
            f"probabilities are the raw softmax (uncalibrated); store one with: {fix}"
        )


def cmd_predict(args: argparse.Namespace) -> int:
    paths = _models(args.model)
    onnx = any(Path(p).suffix.lower() == ".onnx" for p in paths)
    if onnx and len(paths) > 1:
        raise ConfigError("an ensemble (-m repeated) is of .pth models, not .onnx ones")
    _check_predict_flags(args, onnx)
    from mnistcnn.predict.files import DIGITS, load_onnx, predict_paths

    if onnx:  # onnxruntime: torch is never imported
        model: Any = load_onnx(paths[0])
        raw = [] if model.temperature is not None else paths
        classify, labels = model.probabilities, model.labels
    else:
        from mnistcnn.checkpoint import load_model
        from mnistcnn.predict.classify import Ensemble, classifier, stored_temperatures
        from mnistcnn.predict.number import predict_numbers

        models = [load_model(path) for path in paths]
        model = models[0] if len(models) == 1 else Ensemble(models)
        raw = [p for p, m in zip(paths, models, strict=True) if not stored_temperatures(m.meta)]
        classify, labels = classifier(model, args.tta), DIGITS
    options: dict[str, Any] = {
        "top_k": args.top_k,
        "save_dir": args.save_preprocessed,
        "min_confidence": args.min_confidence,
    }
    if args.multi:
        found: Iterable[Any] = predict_numbers(model, args.images, **options, use_tta=args.tta)
    else:
        found = predict_paths(classify, args.images, labels=labels, **options)
    results = []
    for p in found:  # each answer printed as it comes, errors on stderr
        results.append(p)
        if p.error:
            stderr(f"mnistcnn: error: {p.error}")
        elif not args.json:
            stdout(_number_line(p) if args.multi else _label_line(p))
    _note_uncalibrated(raw, results)
    if args.explain:
        from mnistcnn.predict.classify import explain_predictions

        for path in explain_predictions(model, results, args.save_preprocessed):
            stderr(f"saved {path}")
    if not results:
        raise MnistCnnError(f"no image files found in {', '.join(args.images)}")
    if args.json:
        print_json([dataclasses.asdict(p) for p in results])
    return 1 if any(p.error for p in results) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mnistcnn.serve.app import serve
    except ModuleNotFoundError as exc:
        if exc.name not in {"fastapi", "uvicorn", "multipart", "python_multipart", "starlette"}:
            raise
        raise MnistCnnError(f"serve needs {exc.name}: pip install 'mnistcnn[serve]'") from None
    serve(_models(None if args.model is None else [args.model])[0], args.host, args.port)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mnistcnn.export import export_model, format_export

    how = {k: getattr(args, k) for k in ("quantize", "data_dir", "calibration", "overwrite")}
    report = export_model(args.model, args.output, fmt=args.format, fuse_bn=args.fuse, **how)
    _print(args, dataclasses.asdict(report), format_export(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mnistcnn.report.page import write_report

    written = write_report(args.run, args.output, args.data_dir)
    stdout(f"wrote {len(written) - 1} pictures and {written['html']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mnistcnn.report.runs import compare_runs, format_comparison

    table = compare_runs(args.runs, args.plot)
    _print(args, table, format_comparison(table))
    stderr(f"saved {args.plot}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from mnistcnn.tune.report import format_study
    from mnistcnn.tune.search import load_tune_config
    from mnistcnn.tune.study import run_study

    flags = {k: getattr(args, k) for k in ("study", "storage", "n_trials", "timeout")}
    search = [f"search.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    sets = [*_overrides(args), *search]
    report = run_study(load_tune_config(args.config, sets), jobs=args.jobs, quiet=args.quiet)
    _print(args, dataclasses.asdict(report), format_study(report))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from mnistcnn.config.build import dump, load_config

    print(dump(load_config(args.config, _overrides(args))), end="")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from mnistcnn.config.build import load_config
    from mnistcnn.model.nets import build_model
    from mnistcnn.model.summary import format_layer_table, layer_table

    cfg = load_config(args.config, _overrides(args))
    model = build_model(cfg.model.name, dict(cfg.model.kwargs), cfg.data.mean, cfg.data.std)
    _print(args, layer_table(model), format_layer_table(model))
    return 0
