"""Training: it learns on real MNIST, is reproducible, stops on NaN, and every schedule runs."""

from __future__ import annotations

import csv
import io
import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import log_lines
from tqdm import tqdm

from mnistcnn.bundled import BUNDLED
from mnistcnn.checkpoint import load_model, load_state, load_training_state
from mnistcnn.config.build import from_dict, load_config, optimizers
from mnistcnn.config.schema import Config
from mnistcnn.data import Split
from mnistcnn.errors import ConfigError, MnistCnnError, TrainingError
from mnistcnn.model.nets import build_model
from mnistcnn.train import build, loops
from mnistcnn.train.build import (
    autocast,
    autocast_dtype,
    build_loss,
    build_optimizer,
    build_scheduler,
    resolve_device,
)
from mnistcnn.train.fitting import fit, output_paths
from mnistcnn.train.loops import evaluate, train_one_epoch

CPU = torch.device("cpu")
# Small and fast: 512 training images (4 batches), a 256-image validation split.
QUICK = ("data.subset=512", "data.val_size=256", "train.epochs=1")
# The PyTorch-example model without BatchNorm: a huge SGD step makes its loss NaN at once
# (the BatchNorm CNNs only reach huge finite losses).
DIVERGES = ("model={name: baseline, channels: [4, 8], hidden: 16}", "optim.name=SGD")


@pytest.fixture
def quiet_fit(small_splits: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """`quiet_fit(cfg, **kwargs)`: fit on the session's MNIST, 256 test images, no progress bar."""

    def run(cfg: Config, test_images: int = 256, **kwargs: Any) -> dict[str, Any]:
        return fit(cfg, splits=small_splits(cfg, test_images), progress=False, **kwargs)

    return run


def metrics(cfg: Config) -> list[dict[str, str]]:
    with output_paths(cfg)["metrics"].open() as f:
        return list(csv.DictReader(f))


# --- learning, on the real data ------------------------------------------------------------


@pytest.mark.slow
def test_tiny_config_learns(tiny_run: dict[str, Any]) -> None:
    # configs/tiny.yaml as shipped (8k images, 2 epochs) says "expect about 94 %".
    assert tiny_run["val_accuracy"] > 0.9
    assert tiny_run["test_accuracy"] > 0.9
    assert tiny_run["epochs"] == 2 and tiny_run["epoch"] in (1, 2)
    assert tiny_run["device"] == "cpu"
    assert [line.split()[:2] for line in tiny_run["logs"] if line.startswith("epoch")] == [
        ["epoch", "1/2"],
        ["epoch", "2/2"],
    ]
    assert "8000 train / 5000 val / 10000 test images" in tiny_run["logs"][0]


@pytest.mark.slow
def test_a_run_writes_model_config_and_metrics(tiny_run: dict[str, Any]) -> None:
    cfg = tiny_run["cfg"]
    paths = output_paths(cfg)
    assert paths["model"] == tiny_run["path"]
    # the resolved config beside the model loads back to the same config
    assert from_dict(yaml.safe_load(paths["config"].read_text())) == cfg
    rows = metrics(cfg)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[-1]["train_accuracy"]) > 0.8
    # the model file carries its results
    model = load_model(paths["model"])
    assert model.meta["test_accuracy"] == pytest.approx(tiny_run["test_accuracy"])
    assert model.meta["epoch"] == tiny_run["epoch"]
    written = {p.name for p in paths["model"].parent.iterdir()}
    assert {"tiny.pth", "tiny.yaml", "tiny.metrics.csv"} <= written
    assert not [name for name in written if name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_saved_model_scores_what_fit_reported(tiny_run: dict[str, Any], mnist_test: Split) -> None:
    model = load_model(tiny_run["path"])
    result = evaluate(model, mnist_test, 2000, CPU)
    assert result["accuracy"] == pytest.approx(tiny_run["test_accuracy"], abs=1e-6)
    assert result["loss"] == pytest.approx(tiny_run["test_loss"], rel=1e-4)


def test_seeded_run_twice_gives_identical_weights(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    # augmentation and dropout on: every random source must be seeded
    sets = (
        *QUICK,
        "data.subset=256",
        "model.dropout=0.2",
        "data.augment={degrees: 15, translate: 0.1, scale: 0.1}",
    )
    first = quiet_fit(make_cfg(*sets, f"train.output={tmp_path / 'a.pth'}"))
    second = quiet_fit(make_cfg(*sets, f"train.output={tmp_path / 'b.pth'}"))
    quiet_fit(make_cfg(*sets, "train.seed=1", f"train.output={tmp_path / 'c.pth'}"))
    a, b, c = (load_state(tmp_path / f"{x}.pth") for x in "abc")
    tensors = [k for k, v in a.items() if torch.is_tensor(v)]
    assert all(torch.equal(a[k], b[k]) for k in tensors)
    assert not all(torch.equal(a[k], c[k]) for k in tensors)
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
        assert first[key] == second[key]


# --- stopping ------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_old_model(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    cfg = make_cfg(*QUICK, *DIVERGES, "optim.lr=1e6")
    output = Path(cfg.train.output)
    output.write_bytes(b"the previous model")
    with pytest.raises(TrainingError, match=r"at epoch 1, batch \d+.*optim\.lr") as info:
        quiet_fit(cfg, overwrite=True)
    assert "nan" in str(info.value) or "inf" in str(info.value)
    assert output.read_bytes() == b"the previous model"
    assert [p.name for p in output.parent.iterdir()] == ["model.pth"]


def test_nan_in_a_later_epoch_keeps_the_best_model_so_far(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    # a sane first epoch, then a learning rate 1e30 times larger
    sets = (*QUICK, *DIVERGES, "optim.lr=0.05", "sched={name: StepLR, step_size: 1, gamma: 1e30}")
    cfg = make_cfg(*sets, "train.epochs=3")
    with pytest.raises(TrainingError, match="at epoch 2, batch"):
        quiet_fit(cfg)
    model = load_model(cfg.train.output)
    assert model.meta["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_check_names_the_batch(mnist_test: Split) -> None:
    model = build_model("cnn", {"channels": (4,), "convs_per_stage": (1,)})
    calls = []

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if len(calls) == 3 else loss

    batches = [
        (mnist_test.images[i : i + 8], mnist_test.labels[i : i + 8]) for i in range(0, 48, 8)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(TrainingError, match="loss became nan at epoch 7, batch 3;"):
        train_one_epoch(model, batches, optimizer, loss_fn, device=CPU, log_every=2, epoch=7)


def test_existing_output_is_not_overwritten(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    cfg = make_cfg(*QUICK)
    output = Path(cfg.train.output)
    output.write_bytes(b"keep me")
    with pytest.raises(MnistCnnError, match=r"already exists.*--overwrite") as info:
        quiet_fit(cfg)
    assert str(output) in str(info.value)
    assert output.read_bytes() == b"keep me"


def test_overwrite_replaces_the_output(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    cfg = make_cfg(*QUICK, "model.channels=[4, 8]", "model.convs_per_stage=[1, 1]")
    Path(cfg.train.output).write_bytes(b"old")
    quiet_fit(cfg, overwrite=True)
    assert load_model(cfg.train.output).args["channels"] == [4, 8]


def interrupt_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    real = loops.train_one_epoch

    def train(*args: Any, **kwargs: Any) -> dict[str, float]:
        if kwargs["epoch"] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loops, "train_one_epoch", train)


def test_ctrl_c_after_an_epoch_keeps_the_best_model(
    make_cfg: Callable[..., Config],
    quiet_fit: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    logged: list[str],
) -> None:
    interrupt_in_epoch(monkeypatch, 2)
    cfg = make_cfg(*QUICK, "train.epochs=3")
    with pytest.raises(KeyboardInterrupt):
        quiet_fit(cfg)
    assert f"the last model (epoch 1) is in {cfg.train.output}" in logged[-1]
    assert load_model(cfg.train.output).meta["epoch"] == 1


@pytest.mark.parametrize(("keep", "saved"), [("last", 3), ("best", 1)])
def test_keep_saves_the_last_epoch_or_the_best_by_validation(
    make_cfg: Callable[..., Config],
    quiet_fit: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    keep: str,
    saved: int,
) -> None:
    # Validation accuracy falls every epoch: "best" stays on the first, "last" moves on.
    real, scored = loops.evaluate, []

    def falling(*args: Any, **kwargs: Any) -> dict[str, float]:
        scored.append(1)
        return {**real(*args, **kwargs), "accuracy": 1 / len(scored)}

    monkeypatch.setattr(loops, "evaluate", falling)
    cfg = make_cfg(*QUICK, "train.epochs=3", f"train.keep={keep}", "train.precise_bn=0")
    result = quiet_fit(cfg)
    assert result["epoch"] == saved and load_model(cfg.train.output).meta["epoch"] == saved
    last = load_training_state(output_paths(cfg)["checkpoint"])["model"]
    kept = load_state(cfg.train.output)
    same = all(torch.equal(v, last[k]) for k, v in kept.items() if torch.is_tensor(v))
    assert same == (keep == "last")


def test_precise_bn_counts_each_batchnorm_over_the_images(mnist_test: Split) -> None:
    model = build_model("cnn", {"channels": (8, 16), "convs_per_stage": (1, 1)})
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(9.0)
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(norms))}
    hooks = [
        norm.register_forward_hook(lambda _m, args, _o, i=i: seen[i].append(args[0].detach()))
        for i, norm in enumerate(norms)
    ]
    images = Split(mnist_test.images[:300], mnist_test.labels[:300])
    loops.recount_batchnorm(model, images, 250, 100, CPU)  # batches of 100, 100 and 50
    for hook in hooks:
        hook.remove()
    assert not model.training and all(norm.momentum == 0.1 for norm in norms)
    for i, norm in enumerate(norms):
        batches = seen[i]
        assert [len(b) for b in batches] == [100, 100, 50]
        # each batch's mean and unbiased variance per channel, averaged over the batches
        mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
        var = torch.stack([b.var((0, 2, 3)) for b in batches]).mean(0)
        assert torch.allclose(norm.running_mean, mean, atol=1e-5)
        assert torch.allclose(norm.running_var, var, rtol=1e-4)


def test_precise_bn_restores_a_trained_model(mnist_train: Split, mnist_test: Split) -> None:
    # Statistics thrown away (mean 0, variance 1): the model reads badly; recounted over
    # clean training images, it reads as well as when it was saved. The bundled model: a
    # barely trained one's accuracy moves by points with any change to its statistics.
    model = load_model(BUNDLED)
    test = Split(mnist_test.images[:2000], mnist_test.labels[:2000])
    before = evaluate(model, test, 500, CPU)["accuracy"]
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.reset_running_stats()
    assert evaluate(model, test, 500, CPU)["accuracy"] < before - 0.2
    train = Split(mnist_train.images[:1000], mnist_train.labels[:1000])
    loops.recount_batchnorm(model, train, 1000, 128, CPU)
    assert evaluate(model, test, 500, CPU)["accuracy"] > before - 0.005


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(
    make_cfg: Callable[..., Config],
    quiet_fit: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    logged: list[str],
) -> None:
    interrupt_in_epoch(monkeypatch, 1)
    cfg = make_cfg(*QUICK)
    with pytest.raises(KeyboardInterrupt):
        quiet_fit(cfg)
    assert "interrupted in epoch 1" in logged[-1] and "nothing saved" in logged[-1]
    assert not Path(cfg.train.output).exists()


def test_ctrl_c_right_after_an_epoch_line_reports_the_saved_model(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    # A user presses Ctrl-C when the epoch line appears: the epoch's model is already saved,
    # so the message must point at it, not say that nothing was saved.
    cfg = make_cfg(*QUICK, "train.epochs=3")

    class CtrlCAtEpochLine(logging.Handler):
        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())
            if self.lines[-1].startswith("epoch   1/"):
                raise KeyboardInterrupt

    with log_lines(CtrlCAtEpochLine) as logs, pytest.raises(KeyboardInterrupt):
        quiet_fit(cfg)
    assert load_model(cfg.train.output).meta["epoch"] == 1
    assert "nothing saved" not in logs[-1]
    assert str(cfg.train.output) in logs[-1]


# --- schedules, optimizers, losses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sched", "expect"),
    [
        ("{name: none}", lambda lrs: lrs == [0.01, 0.01]),
        ("{name: StepLR, step_size: 1, gamma: 0.5}", lambda lrs: lrs == [0.01, 0.005]),
        ("{name: ExponentialLR, gamma: 0.1}", lambda lrs: lrs == pytest.approx([1e-2, 1e-3])),
        ("{name: ReduceLROnPlateau, patience: 0, factor: 0.5}", lambda lrs: lrs[0] == 0.01),
        ("{name: CosineAnnealingLR, T_max: 2}", lambda lrs: lrs[0] > lrs[1] > 0),
        # (stepped per batch: see test_one_cycle_steps_every_batch)
        ("{name: OneCycleLR, max_lr: 0.01, pct_start: 0.5}", lambda lrs: lrs[0] < 0.001),
    ],
    ids=["none", "StepLR", "ExponentialLR", "ReduceLROnPlateau", "Cosine", "OneCycleLR"],
)
def test_schedulers_run(
    make_cfg: Callable[..., Config],
    quiet_fit: Callable[..., dict[str, Any]],
    sched: str,
    expect: Callable[[list[float]], bool],
) -> None:
    cfg = make_cfg(*QUICK, "train.epochs=2", "optim.lr=0.01", f"sched={sched}")
    result = quiet_fit(cfg)
    lrs = [float(row["lr"]) for row in metrics(cfg)]
    assert expect(lrs), lrs
    assert 0 <= result["test_accuracy"] <= 1


def test_one_cycle_steps_every_batch(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    # 2 epochs, warm-up over the first half of the steps: epoch 2 starts at the peak only if
    # the schedule stepped once per batch (stepping per epoch would leave it near the start).
    cfg = make_cfg(
        *QUICK, "train.epochs=2", "sched={name: OneCycleLR, max_lr: 0.02, pct_start: 0.5}"
    )
    quiet_fit(cfg)
    lrs = [float(row["lr"]) for row in metrics(cfg)]
    assert lrs[0] == pytest.approx(0.02 / 25)  # OneCycleLR starts at max_lr / div_factor
    assert lrs[1] > 0.8 * 0.02  # just past the peak (per-epoch steps would give < 0.002)


def test_one_cycle_defaults_to_the_optimizer_rate_and_the_run_length() -> None:
    # (load_config would keep the default recipe's max_lr: the component keeps its name)
    raw = {"optim": {"name": "SGD", "lr": 0.3}, "sched": {"name": "OneCycleLR"}}
    cfg = from_dict({**raw, "train": {"epochs": 4}})
    model = build_model("cnn", {"channels": (4,), "convs_per_stage": (1,)})
    scheduler = build_scheduler(cfg, build_optimizer(cfg, model), steps_per_epoch=10)
    assert scheduler.total_steps == 40
    assert scheduler.optimizer.param_groups[0]["max_lr"] == 0.3


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["sched.name=StepLR"], "sched: StepLR"),
        (["sched={name: MultiStepLR}"], "sched: MultiStepLR"),
        (["optim.lr=-1"], "optim: SGD"),
        (["optim={name: Adam, betas: [0.9]}"], "optim: Adam"),
    ],
)
def test_component_that_cannot_be_built_is_a_config_error(sets: list[str], match: str) -> None:
    cfg = load_config(None, sets)
    model = build_model("cnn", {"channels": (4,), "convs_per_stage": (1,)})
    with pytest.raises(ConfigError, match=match):
        build_loss(cfg)(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long))
        build_scheduler(cfg, build_optimizer(cfg, model), steps_per_epoch=10)


def one_step(cfg: Config, mnist_test: Split) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": (4, 8), "convs_per_stage": (1, 1)})
    batches = [(mnist_test.images[:32], mnist_test.labels[:32])] * 2
    optimizer = build_optimizer(cfg, model)
    return train_one_epoch(model, batches, optimizer, build_loss(cfg), device=CPU)


@pytest.mark.parametrize("name", sorted(optimizers()))
def test_every_listed_optimizer_trains_or_is_a_config_error(name: str, mnist_test: Split) -> None:
    # `config` offers these names; choosing one must not end in a traceback.
    cfg = load_config(None, [f"optim.name={name}"])
    try:
        result = one_step(cfg, mnist_test)
    except ConfigError:
        return
    assert set(result) == {"loss", "accuracy"}


@pytest.mark.parametrize(
    "sets",
    [
        ["loss={name: MultiMarginLoss}"],
        ["loss.reduction=sum"],
        ["loss.reduction=none"],
        ["loss.label_smoothing=2"],
        ["loss={name: MultiMarginLoss, p: 3}"],
    ],
)
def test_losses_the_config_accepts_train_or_are_config_errors(
    sets: list[str], mnist_test: Split
) -> None:
    cfg = load_config(None, sets)
    try:
        result = one_step(cfg, mnist_test)
    except ConfigError:
        return
    assert result["loss"] > 0


# --- the loops and the device --------------------------------------------------------------


def test_train_one_epoch_and_evaluate_return_metrics(mnist_test: Split) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": (8, 16), "convs_per_stage": (1, 1)})
    split = Split(mnist_test.images[:128], mnist_test.labels[:128])
    batches = [(split.images[i : i + 32], split.labels[i : i + 32]) for i in range(0, 128, 32)]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    before = evaluate(model, split, 100, CPU)
    bar = tqdm(total=len(batches), file=io.StringIO())
    for epoch in range(1, 4):
        train = train_one_epoch(
            model,
            batches,
            optimizer,
            torch.nn.CrossEntropyLoss(),
            device=CPU,
            log_every=3,
            progress=bar,
            epoch=epoch,
            channels_last=True,
        )
    after = evaluate(model, split, 100, CPU)
    assert set(train) == {"loss", "accuracy"} == set(after)
    assert 0 <= train["accuracy"] <= 1
    assert after["loss"] < before["loss"] and after["accuracy"] > before["accuracy"]
    assert not model.training  # evaluate leaves the model in eval mode


def test_resolve_device_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == CPU


@pytest.mark.parametrize(
    ("native", "vendor", "amx", "expected"),
    [
        (True, "GenuineIntel", True, torch.bfloat16),  # AMX tiles
        (True, "AuthenticAMD", False, torch.bfloat16),  # AMD's AVX-512 BF16
        (True, "GenuineIntel", False, None),  # Intel's AVX-512 BF16 alone: slower than float32
        (True, "", False, torch.bfloat16),  # another maker with native bf16 (an Arm core)
        (False, "AuthenticAMD", False, None),  # emulated bf16
    ],
)
def test_cpu_autocast_is_bf16_only_where_it_is_faster(
    monkeypatch: pytest.MonkeyPatch, native: bool, vendor: str, amx: bool, expected: Any
) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(build, "cpu_vendor", lambda: vendor)
    autocast_dtype.cache_clear()
    try:
        assert autocast_dtype(CPU) is expected
        with autocast(CPU, enabled=True):
            assert torch.is_autocast_enabled("cpu") is (expected is not None)
    finally:
        autocast_dtype.cache_clear()  # the next caller sees this machine again


def test_cpu_vendor_is_the_processors_own_name() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    vendor = build.cpu_vendor()
    if "vendor_id" in text:
        assert vendor and f"vendor_id\t: {vendor}\n" in text
    else:
        assert vendor == platform.processor()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device(name)


def test_a_cuda_index_past_the_machines_gpus_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen on a 1-GPU machine: cuda:1 passed the check and failed in the first copy to it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"^--device is cuda:1 but this machine has 1 GPU"):
        resolve_device("cuda:1", "--device")
    with pytest.raises(ConfigError, match=r"^train.device is cuda:2 .* 1 GPU\(s\): use cuda:0$"):
        resolve_device("cuda:2")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_without_mps_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_on_cuda_without_cuda_fails_before_training(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        quiet_fit(make_cfg(*QUICK, "train.device=cuda"))
    assert not Path(make_cfg().train.output).exists()


def test_threads_setting_is_applied(
    make_cfg: Callable[..., Config], quiet_fit: Callable[..., dict[str, Any]]
) -> None:
    threads = 2 if torch.get_num_threads() == 1 else 1  # not what the session uses
    sets = (*QUICK, "data.subset=64", "data.val_size=64", f"train.threads={threads}")
    quiet_fit(make_cfg(*sets), test_images=64)
    assert torch.get_num_threads() == threads  # restored after the test by conftest


def test_output_paths() -> None:
    paths = output_paths(load_config(None, ["train.output=runs/a/b.pth"]))
    assert paths["model"] == Path("runs/a/b.pth")
    assert paths["config"] == Path("runs/a/b.yaml")
    assert paths["metrics"] == Path("runs/a/b.metrics.csv")
    assert all(path.parent == Path("runs/a") for path in paths.values())
