"""`mnistcnn report`: a run's PNGs and one static report.html that embeds them."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from mnistcnn.checkpoint import load_model
from mnistcnn.files import atomic_write_text
from mnistcnn.model import DigitNet, count_parameters
from mnistcnn.report.render import FIGURES, render
from mnistcnn.report.runs import Run, find_run, percent, read_rows, train_seconds

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


def _summary(model: DigitNet, rows: list[dict[str, str]]) -> dict[str, str]:
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


def write_html(run: Run, pngs: dict[str, Path], out: Path) -> Path:
    """A static report.html with every PNG embedded (data: URLs), the config and metrics."""
    model = load_model(run.model)
    rows = read_rows(run.metrics)
    summary = "".join(f"<tr>{_cells([k, v])}</tr>" for k, v in _summary(model, rows).items())
    body = "".join(f"<tr>{_cells([str(v) for v in r.values()])}</tr>" for r in rows)
    epochs = (
        f"<table><thead><tr>{_cells(list(rows[0]), 'th')}</tr></thead><tbody>{body}</tbody></table>"
    )
    page = PAGE.format(
        title=html.escape(run.name),
        model=html.escape(str(run.model)),
        summary=summary,
        epochs=epochs,
        figures="\n".join(_figure(name, png) for name, png in pngs.items()),
        config=html.escape(run.config.read_text(encoding="utf-8")),
    )
    atomic_write_text(out, page)
    return out


def write_report(
    path: str | Path, out_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> dict[str, Path]:
    """Render a run's PNGs and report.html (default: RUN/report/ or MODEL-report/)."""
    run = find_run(path)
    out = Path(out_dir) if out_dir is not None else run.report_dir
    pngs = render(run, out, data_dir)
    return {**pngs, "html": write_html(run, pngs, out / "report.html")}
