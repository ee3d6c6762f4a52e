"""The run folder (`runs/<name>-<time>/`: config, steps.csv, metrics.csv, the saved model) and its
TensorBoard events (also the test set's confusion matrix and worst mistakes); without tensorboard
only the files, with `train.run_dir: null` nothing."""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mnistcnn import files
from mnistcnn.config import build as config_mod
from mnistcnn.config.schema import Config
from mnistcnn.data import to_float
from mnistcnn.errors import MnistCnnError

log = logging.getLogger(__name__)
OnLog = Callable[[int, dict[str, float]], None]
STEP_FIELDS = ("step", "epoch_float", "loss", "accuracy", "lr", "grad_norm")
ENABLE_HINT = "TensorBoard event files are off: pip install 'mnistcnn[viz]' to write them"


def _new_folder(parent: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = parent / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise MnistCnnError(f"cannot create the run folder {folder}: {exc.strerror}") from None
    raise MnistCnnError(f"too many runs named {name}-{stamp} in {parent}")


def _belongs(run_dir: str | None, cfg: Config) -> bool:
    """Is `run_dir` the folder of this very run (not of a checkpoint copied from elsewhere)?"""
    if not run_dir or not (Path(run_dir) / files.RUN_CONFIG).is_file():
        return False
    recorded = config_mod.read_yaml_file(Path(run_dir) / files.RUN_CONFIG).get("train", {})
    return isinstance(recorded, dict) and recorded.get("output") == cfg.train.output


@dataclass
class RunLog:
    """One training run's folder and TensorBoard writer (`folder` is None when disabled)."""

    folder: Path | None
    writer: Any
    steps: list[dict[str, Any]]
    _norms: list[float] = field(default_factory=list)

    @classmethod
    def open(cls, cfg: Config, resume: dict[str, Any] | None, step: int) -> RunLog:
        """Create (or, resuming after global `step`, reopen) the run folder; write the config."""
        if not cfg.train.run_dir:
            return cls(None, None, [])
        steps: list[dict[str, Any]] = []
        purge = None
        if resume is not None and _belongs(resume.get("run_dir"), cfg):
            folder = Path(resume["run_dir"])
            purge = step + 1
            saved = folder / files.RUN_STEPS
            if saved.is_file():
                steps = [r for r in files.read_csv(saved) if int(r["step"]) < purge]
        else:
            name = cfg.train.run_name or Path(cfg.train.output).stem
            folder = _new_folder(Path(cfg.train.run_dir), name)
        files.atomic_write_text(folder / files.RUN_CONFIG, config_mod.dump(cfg))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            writer = None
        else:
            writer = SummaryWriter(log_dir=str(folder), purge_step=purge)
            text = "\n".join(f"    {line}" for line in config_mod.dump(cfg).splitlines())
            writer.add_text("config", text)
        see = f"tensorboard --logdir {folder.parent}" if writer else ENABLE_HINT
        log.info(f"run folder {folder} ({see}; pictures: mnistcnn report {folder})")
        return cls(folder, writer, steps)

    def graph(self, model: nn.Module, example: Tensor) -> None:
        """Add the model graph, traced on a copy in eval mode (BatchNorm statistics stay put)."""
        if self.writer is None:
            return
        twin = copy.deepcopy(model).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.writer.add_graph(twin, example)
            except Exception as exc:  # a model jit.trace cannot follow: the run goes on
                warnings.warn(f"TensorBoard graph skipped: {exc}", stacklevel=2)

    def step_logger(self, epoch: int, steps_per_epoch: int) -> OnLog | None:
        """A `train_one_epoch(on_log=...)` callback for this epoch, or None when disabled."""
        if self.folder is None:
            return None
        self._norms = []

        def on_log(step: int, stats: dict[str, float]) -> None:
            global_step = (epoch - 1) * steps_per_epoch + step
            at = {"step": global_step, "epoch_float": round(epoch - 1 + step / steps_per_epoch, 4)}
            self.steps.append(at | {k: round(v, 6) if k != "lr" else v for k, v in stats.items()})
            self._norms.append(stats["grad_norm"])
            if self.writer is not None:
                for key, value in stats.items():
                    self.writer.add_scalar(f"step/{key}", value, global_step)

        return on_log

    def epoch(self, history: list[dict[str, Any]], saved: Path | None) -> None:
        """Write metrics.csv and steps.csv, copy the model if it was `saved`, add the last row."""
        if self.folder is None:
            return
        files.write_csv(self.folder / files.RUN_METRICS, history)
        files.write_csv(self.folder / files.RUN_STEPS, self.steps, STEP_FIELDS)
        if saved is not None:
            self.copy_model(saved)
        if self.writer is None:
            return
        row = history[-1]
        e = row["epoch"]
        # One tag per curve: add_scalars would make a sub-run folder per curve.
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            self.writer.add_scalar(f"epoch/{key}", row[key], e)
        if self._norms:
            self.writer.add_scalar("epoch/grad_norm", sum(self._norms) / len(self._norms), e)
        self.writer.flush()

    def copy_model(self, model_file: Path) -> None:
        """Copy the saved model into the run folder (atomically)."""
        if self.folder is not None:
            data = model_file.read_bytes()
            files.atomic_write(self.folder / files.RUN_MODEL, lambda f: f.write(data))

    def finish(self, images: Tensor, labels: Tensor, logits: Tensor, meta: dict) -> None:
        """Add the test set's confusion matrix and most confident mistakes to TensorBoard."""
        if self.writer is None:
            return
        from mnistcnn.metrics import confusion_matrix

        try:
            from mnistcnn.report import figures
        except MnistCnnError as exc:  # tensorboard without matplotlib: scalars and graph only
            log.info(f"no confusion-matrix or mistakes images in TensorBoard: {exc}")
            return
        matrix = confusion_matrix(logits.argmax(1), labels)
        for tag, fig in (
            ("test/confusion_matrix", figures.confusion(matrix.numpy())),
            ("test/misclassified", figures.mistakes(to_float(images), labels, logits)),
        ):
            self.writer.add_image(tag, figures.to_rgb(fig), dataformats="HWC")
        for key in ("test_accuracy", "test_loss", "val_accuracy"):
            self.writer.add_scalar(f"final/{key}", meta[key], 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
