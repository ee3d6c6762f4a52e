"""`mnistcnn report` and `mnistcnn compare`: a run's pictures, one HTML page, and run tables.

A run is a run folder (config.yaml, metrics.csv, model.pth, maybe steps.csv) or a model `.pth`
whose `.yaml` and `.metrics.csv` lie beside it. The report re-scores the model on the MNIST
test set (the config's data.root, or `data_dir`), renders the figures of `figures.py` as PNGs
and embeds them in a static report.html.
"""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistcnn import config as config_mod
from mnistcnn.checkpoint import load_model
from mnistcnn.errors import MnistCnnError
from mnistcnn.files import atomic_write_text
from mnistcnn.model import DigitNet, count_parameters
from mnistcnn.report import figures
from mnistcnn.train.runlog import CONFIG, METRICS, MODEL, STEPS, WORST, worst_mistakes

# The report's pictures, in page order: file stem -> caption.
FIGURES = {
    "curves": "Loss and accuracy per epoch: training vs validation",
    "lr": "Learning-rate schedule",
    "confusion": "Confusion matrix on the 10k test digits",
    "misclassified": "The test digits the model got wrong most confidently",
    "kernels": "The first convolution layer's learned kernels",
    "feature_maps": "One test digit through the convolution layers",
}
# Keys that differ between any two runs without being a difference in the recipe.
NOT_RECIPE = ("train.output", "train.run_dir", "train.run_name", "data.root")


@dataclass(frozen=True)
class Run:
    """Where one run's files are."""

    name: str
    model: Path
    config: Path
    metrics: Path
    steps: Path | None
    report_dir: Path


def find_run(path: str | Path) -> Run:
    """A run folder, or a model `.pth` with its `.yaml` and `.metrics.csv` beside it."""
    path = Path(path)
    if not path.exists():
        raise MnistCnnError(f"run not found: {path}")
    if path.is_file() and path.name == MODEL and (path.parent / CONFIG).is_file():
        path = path.parent
    if path.is_dir():
        files = [path / MODEL, path / CONFIG, path / METRICS]
        steps = path / STEPS
        run = Run(path.name, *files, steps if steps.is_file() else None, path / "report")
    elif path.suffix == ".pth":
        files = [path, path.with_suffix(".yaml"), path.with_suffix(".metrics.csv")]
        run = Run(path.stem, *files, None, path.with_name(f"{path.stem}-report"))
    else:
        raise MnistCnnError(f"not a run folder or a .pth model: {path}")
    missing = [p.name for p in (run.model, run.config, run.metrics) if not p.is_file()]
    if missing:
        raise MnistCnnError(f"{path} is not a complete run: {', '.join(missing)} missing")
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise MnistCnnError(f"no epochs in {path}")
    return rows


def _activations(model: nn.Module, images: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """The output of every activation after a conv layer (C, H, W) for one image."""
    maps: list[tuple[str, np.ndarray]] = []

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if output.dim() == 4:
            maps.append((f"conv {len(maps) + 1}", output[0].detach().float().cpu().numpy()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.inference_mode():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return maps


def _first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise MnistCnnError("the model has no convolution layer to draw")
    return conv


def render(run: Run, out_dir: Path, data_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every figure of `run` as a PNG in `out_dir`; their paths by figure name."""
    from mnistcnn.data import default_cache_dir, load_mnist, to_float
    from mnistcnn.metrics import confusion_matrix
    from mnistcnn.train import predict_logits

    cfg = config_mod.from_dict(config_mod.read_yaml_file(run.config))
    rows = _rows(run.metrics)
    steps = _rows(run.steps) if run.steps is not None else []
    model = load_model(run.model)
    test = load_mnist(
        data_dir or cfg.data.root, train=False, download=False, cache=default_cache_dir()
    )
    cpu = torch.device("cpu")
    probs = torch.softmax(predict_logits(model, test, 2000, cpu), 1)
    preds = probs.argmax(1)
    worst = worst_mistakes(probs, test.labels, WORST)
    digit = to_float(test.images[:1])
    p = probs[0]
    caption = (
        f"input: test digit #0, a {int(test.labels[0])} "
        f"(predicted {int(p.argmax())}, p={float(p.max()):.3f})"
    )
    made = {
        "curves": figures.curves(rows, steps),
        "lr": figures.learning_rate(rows, steps),
        "confusion": figures.confusion(confusion_matrix(preds, test.labels).numpy()),
        "misclassified": figures.misclassified(
            test.images[worst].float().numpy() / 255.0,
            test.labels[worst].tolist(),
            preds[worst].tolist(),
            probs[worst].max(1).values.tolist(),
            probs[worst, test.labels[worst]].tolist(),
        ),
        "kernels": figures.kernels(_first_conv(model).weight.detach().numpy()),
        "feature_maps": figures.feature_maps(
            digit[0, 0].numpy(), _activations(model, digit), caption
        ),
    }
    return {name: figures.save(fig, out_dir / f"{name}.png") for name, fig in made.items()}


def _summary(model: DigitNet, rows: list[dict[str, str]]) -> dict[str, str]:
    meta = model.meta
    seconds = meta.get("train_seconds") or sum(float(r["seconds"]) for r in rows)
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    out = {
        "test accuracy": _pct(meta.get("test_accuracy")),
        "test loss": f"{meta['test_loss']:.4f}" if "test_loss" in meta else "-",
        "best val accuracy": f"{_pct(float(best['val_accuracy']))} (epoch {best['epoch']})",
        "epochs": str(len(rows)),
        "parameters": f"{count_parameters(model):,}",
        "training time": f"{float(seconds):.1f} s",
        "architecture": f"{model.arch} {model.args}",
    }
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _table(rows: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mnistcnn report: {title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1450px;
  padding: 0 1rem; color: #222; }}
h1 {{ font-size: 1.6rem; }} h2 {{ font-size: 1.2rem; margin-top: 2rem; }}
table {{ border-collapse: collapse; margin: .5rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .2rem .6rem; text-align: right; }}
th {{ background: #f3f3f3; }} .summary td:first-child {{ text-align: left; font-weight: 600; }}
figure {{ margin: 1.5rem 0; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ color: #555; margin-top: .3rem; }}
pre {{ background: #f6f6f6; padding: .8rem; overflow: auto; font-size: 13px; }}
.cols {{ display: flex; gap: 2rem; flex-wrap: wrap; align-items: flex-start; }}
</style></head>
<body>
<h1>mnistcnn report: {title}</h1>
<p>Model <code>{model}</code></p>
<div class="cols">
<div><h2>Final metrics</h2><table class="summary">{summary}</table></div>
<div><h2>Per epoch</h2>{epochs}</div>
</div>
{figures}
<h2>Config</h2>
<pre>{config}</pre>
</body></html>
"""


def write_html(run: Run, pngs: dict[str, Path], out: Path) -> Path:
    """A static report.html with every PNG embedded (data: URLs), the config and metrics."""
    model = load_model(run.model)
    rows = _rows(run.metrics)
    summary = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in _summary(model, rows).items()
    )
    parts = []
    for name, path in pngs.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = html.escape(FIGURES.get(name, name))
        parts.append(
            f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    page = PAGE.format(
        title=html.escape(run.name),
        model=html.escape(str(run.model)),
        summary=summary,
        epochs=_table(rows),
        figures="\n".join(parts),
        config=html.escape(run.config.read_text(encoding="utf-8")),
    )
    atomic_write_text(out, page)
    return out


def report(
    path: str | Path, out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> dict[str, Path]:
    """Render a run's PNGs and report.html (default: RUN/report/ or MODEL-report/)."""
    run = find_run(path)
    out = Path(out_dir) if out_dir is not None else run.report_dir
    pngs = render(run, out, data_dir)
    return {**pngs, "html": write_html(run, pngs, out / "report.html")}


# --- compare -------------------------------------------------------------------------------


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def compare(paths: list[str | Path], plot: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run: the config keys that differ, parameters, best val acc, test acc, time.

    With `plot`, also write an overlay of the runs' validation curves there.
    """
    runs = [find_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two model.pth's, say: tell them apart by their folder
        names = [str(r.model.parent / r.name) for r in runs]
    configs = [_flat(config_mod.read_yaml_file(r.config)) for r in runs]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if k not in NOT_RECIPE and len({repr(c.get(k)) for c in configs}) > 1]
    table = []
    curves = {}
    for name, run, cfg in zip(names, runs, configs, strict=True):
        rows = _rows(run.metrics)
        model = load_model(run.model)
        best = max(float(r["val_accuracy"]) for r in rows)
        seconds = model.meta.get("train_seconds") or sum(float(r["seconds"]) for r in rows)
        table.append(
            {
                "run": name,
                **{k: cfg.get(k) for k in differ},
                "params": count_parameters(model),
                "best_val_accuracy": best,
                "test_accuracy": model.meta.get("test_accuracy"),
                "seconds": round(float(seconds), 1),
            }
        )
        curves[name] = rows
    if plot is not None:
        figures.save(figures.compare(curves), plot)
    return table


def format_compare(table: list[dict[str, Any]]) -> str:
    """The compare rows as an aligned text table, one column per run (config keys can be many)."""

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key in ("best_val_accuracy", "test_accuracy"):
            return _pct(value)
        if key == "params":
            return f"{value:,}"
        if key == "seconds":
            return f"{value:.1f} s"
        return str(value)

    labels = {"best_val_accuracy": "best val acc", "test_accuracy": "test acc", "seconds": "time"}
    grid = [[labels.get(k, k), *(cell(k, row[k]) for row in table)] for k in table[0]]
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in grid
    )
