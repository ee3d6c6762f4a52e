"""`mnistcnn report`: the model re-scored on the MNIST test set, every figure of the run saved
as a PNG, and one static report.html that embeds them."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistcnn.checkpoint import load_model
from mnistcnn.config import build as config_mod
from mnistcnn.files import atomic_write_text, read_csv
from mnistcnn.model.nets import DigitNet
from mnistcnn.model.summary import count_parameters, probe
from mnistcnn.report import figures
from mnistcnn.report.runs import find_run, percent, read_rows, train_seconds

Rows = list[dict[str, str]]
# The report's pictures, in page order: file stem -> caption.
FIGURES = {
    "curves": "Loss and accuracy per epoch: training vs validation",
    "lr": "Learning-rate schedule",
    "confusion": "Confusion matrix on the 10k test digits",
    "misclassified": "The test digits the model got wrong most confidently",
    "kernels": "The first convolution layer's learned kernels",
    "feature_maps": "One test digit through the convolution layers",
}


def _activations(model: nn.Module, images: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """The output of every activation after a conv layer (C, H, W) for one image."""
    maps: list[tuple[str, np.ndarray]] = []

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if output.dim() == 4:
            maps.append((f"conv {len(maps) + 1}", output[0].float().cpu().numpy()))

    probe(model, {m: hook for m in model.modules() if isinstance(m, nn.ReLU)}, images)
    return maps


def _render(
    model: DigitNet, rows: Rows, steps: Rows, root: str | Path, out: Path
) -> dict[str, Path]:
    """Write every figure as a PNG in `out`; their paths by figure name."""
    from mnistcnn.data import default_cache_dir, load_mnist, to_float
    from mnistcnn.metrics import confusion_matrix
    from mnistcnn.train.loops import predict_logits

    test = load_mnist(root, train=False, download=False, cache=default_cache_dir())
    images = to_float(test.images)
    logits = predict_logits(model, test, 0, torch.device("cpu"))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # every model has one
    probs = torch.softmax(logits, 1)
    p = probs[0]
    caption = (
        f"input: test digit #0, a {int(test.labels[0])} "
        f"(predicted {int(p.argmax())}, p={float(p.max()):.3f})"
    )
    made = {
        "curves": figures.curves(rows, steps),
        "lr": figures.learning_rate(rows, steps),
        "confusion": figures.confusion(confusion_matrix(probs.argmax(1), test.labels).numpy()),
        "misclassified": figures.mistakes(images, test.labels, logits),
        "kernels": figures.kernels(conv.weight.detach().numpy()),
        "feature_maps": figures.feature_maps(
            images[0, 0].numpy(), _activations(model, images[:1]), caption
        ),
    }
    return {name: figures.save(fig, out / f"{name}.png") for name, fig in made.items()}


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


def _summary(model: DigitNet, rows: Rows) -> dict[str, str]:
    meta = model.meta
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    return {
        "test accuracy": percent(meta.get("test_accuracy")),
        "test loss": f"{meta['test_loss']:.4f}" if "test_loss" in meta else "-",
        "best val accuracy": f"{percent(float(best['val_accuracy']))} (epoch {best['epoch']})",
        "epochs": str(len(rows)),
        "parameters": f"{count_parameters(model):,}",
        "training time": f"{train_seconds(model, rows):.1f} s",
        "architecture": f"{model.arch} {model.args}",
    }


def _cells(values: list[str], tag: str = "td") -> str:
    return "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values)


def _figure(name: str, png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    caption = html.escape(FIGURES.get(name, name))
    return (
        f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def write_report(
    path: str | Path, out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> dict[str, Path]:
    """A run's PNGs and a static report.html embedding them (default: RUN/report/ or
    MODEL-report/)."""
    run = find_run(path)
    out = Path(out_dir) if out_dir is not None else run.report_dir
    cfg = config_mod.from_dict(config_mod.read_yaml_file(run.config))
    rows = read_rows(run.metrics)
    steps = read_csv(run.steps) if run.steps is not None else []  # none when no step was logged
    model = load_model(run.model)
    pngs = _render(model, rows, steps, data_dir or cfg.data.root, out)
    summary = "".join(f"<tr>{_cells([k, v])}</tr>" for k, v in _summary(model, rows).items())
    head = _cells(list(rows[0]), "th")
    body = "".join(f"<tr>{_cells([str(v) for v in r.values()])}</tr>" for r in rows)
    page = PAGE.format(
        title=html.escape(run.name),
        model=html.escape(str(run.model)),
        summary=summary,
        epochs=f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
        figures="\n".join(_figure(name, png) for name, png in pngs.items()),
        config=html.escape(run.config.read_text(encoding="utf-8")),
    )
    atomic_write_text(out / "report.html", page)
    return {**pngs, "html": out / "report.html"}
