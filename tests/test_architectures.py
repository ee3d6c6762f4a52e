"""Architecture options, `model show`, the presets, and transfer (--init-from, --freeze)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CONFIGS, REPO

from mnistcnn.checkpoint import load_model, save_model
from mnistcnn.cli import main
from mnistcnn.config.build import load_config
from mnistcnn.data import Split, invert
from mnistcnn.errors import CheckpointError, ConfigError
from mnistcnn.model.layers import ACTIVATIONS, ATTENTIONS, NORMS, POOLS, GlobalAvgPool
from mnistcnn.model.nets import build_model, model_from_state
from mnistcnn.model.summary import count_batchnorms, count_parameters, fuse, layer_table
from mnistcnn.train.build import freeze, init_from
from mnistcnn.train.fitting import fit

PRESETS = sorted((CONFIGS / "arch").glob("*.yaml")) + sorted((CONFIGS / "transfer").glob("*.yaml"))
TINY = {"channels": (4, 8), "convs_per_stage": (2, 1)}  # two convs: the residual path runs


# --- every option combination builds, runs forward and backward ----------------------------


OPTIONS = (NORMS, (False, True), ATTENTIONS, POOLS, ACTIVATIONS)
COMBINATIONS = list(itertools.product(*OPTIONS))
# Every 14th combination still pairs every value of each option with every value of each other
# option (test_fast_combinations_cover_every_pair); the inner loop runs those, CI all 288.
FAST = COMBINATIONS[::14]


def test_fast_combinations_cover_every_pair() -> None:
    for i, j in itertools.combinations(range(len(OPTIONS)), 2):
        covered = {(c[i], c[j]) for c in FAST}
        assert covered == set(itertools.product(OPTIONS[i], OPTIONS[j])), (i, j)


@pytest.mark.parametrize(
    ("norm", "residual", "attention", "pool", "activation"),
    [pytest.param(*c, marks=() if c in FAST else pytest.mark.slow) for c in COMBINATIONS],
)
def test_every_option_combination_trains_a_step(
    norm: str, residual: bool, attention: str, pool: str, activation: str
) -> None:
    torch.manual_seed(0)
    options = {"norm": norm, "residual": residual, "attention": attention, "pool": pool}
    model = build_model("cnn", {**TINY, **options, "activation": activation}).train()
    logits = model(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # The table's shapes come from the same forward; its params column sums to the total.
    assert sum(row["params"] for row in layer_table(model)) == count_parameters(model)


def test_default_options_keep_the_original_layout() -> None:
    # Saved models and benchmarks depend on these names (and on the init order behind them).
    keys = [k for k in build_model("cnn", TINY).state_dict() if not k.endswith("_extra_state")]
    block = ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    block.append("1.num_batches_tracked")
    expected = [f"features.0.first.{k}" for k in block]
    expected += [f"features.0.rest.0.{k}" for k in block]
    expected += [f"features.2.first.{k}" for k in block]  # features.1 is the max-pool
    assert keys == [*expected, "classifier.3.weight", "classifier.3.bias"]
    torch.manual_seed(0)
    default = build_model("cnn", TINY).state_dict()
    torch.manual_seed(0)
    spelled = build_model(
        "cnn", {**TINY, "norm": "batch", "attention": "none", "pool": "max", "activation": "relu"}
    ).state_dict()
    for key, value in default.items():
        if torch.is_tensor(value):
            assert torch.equal(value, spelled[key]), key


def test_a_file_saved_before_the_options_existed_still_loads(tmp_path: Path) -> None:
    model = build_model("cnn", TINY)
    state = model.state_dict()
    old = dict(state["_extra_state"])
    old["args"] = {
        k: v for k, v in old["args"].items() if k not in ("norm", "attention", "pool", "activation")
    }
    rebuilt = model_from_state({**state, "_extra_state": old})
    assert rebuilt.args == model.args


def test_batch_norm_false_is_norm_none() -> None:
    torch.manual_seed(0)
    old = build_model("cnn", {**TINY, "batch_norm": False})
    torch.manual_seed(0)
    new = build_model("cnn", {**TINY, "norm": "none"})
    assert old.state_dict().keys() == new.state_dict().keys()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in old.modules())
    with pytest.raises(ConfigError, match="batch_norm: false contradicts norm: group"):
        build_model("cnn", {**TINY, "batch_norm": False, "norm": "group"})


@pytest.mark.parametrize(
    ("key", "value"),
    [("norm", "instance"), ("attention", "cbam"), ("pool", "lp"), ("activation", "tanh")],
)
def test_unknown_option_values_list_the_valid_ones(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.{key}: '{value}' is not one of"):
        build_model("cnn", {**TINY, key: value})


@pytest.mark.parametrize(
    ("pool", "sides"), [("max", [28, 14, 7, 3, 1]), ("strided", [28, 14, 7, 4, 2])]
)
def test_layer_table_shows_the_size_arithmetic(pool: str, sides: list[int]) -> None:
    model = build_model("cnn", {"channels": (2,) * 5, "convs_per_stage": (1,) * 5, "pool": pool})
    stages = [row for row in layer_table(model) if row["type"] == "Stage"]
    assert [row["shape"][-1] for row in stages] == sides
    convs = [row for row in layer_table(model) if row["type"] == "Conv2d"]
    assert convs[3]["arithmetic"] == (
        "(7+2*1-3)//2+1 = 4" if pool == "strided" else "(3+2*1-3)//1+1 = 3"
    )


@pytest.mark.parametrize(("pool", "stem"), [("max", 0), ("avg", 0), ("max", 8)])
def test_pool_before_norm_and_stem_keep_the_sides_and_train(pool: str, stem: int) -> None:
    torch.manual_seed(0)
    options = {"channels": (4, 8, 8), "convs_per_stage": (1, 2, 1), "pool": pool}
    model = build_model("cnn", {**options, "pool_before_norm": True, "stem": stem}).train()
    rows = layer_table(model)
    stages = [row["shape"][-1] for row in rows if row["type"] == "Stage"]
    assert stages == ([7, 3, 3] if stem else [14, 7, 7])  # each stage ends pooled but the last
    blocks = [r["type"] for r in rows if r["name"].startswith(f"features.{1 + bool(stem)}.rest.0.")]
    assert blocks == [
        "Conv2d",
        "MaxPool2d" if pool == "max" else "AvgPool2d",
        "BatchNorm2d",
        "ReLU",
    ]
    if stem:
        assert rows[0]["type"] == "Conv2d" and rows[0]["arithmetic"] == "(28+2*1-3)//2+1 = 14"
    torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.arange(4)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _random_statistics(model: torch.nn.Module, low: float) -> None:
    """BatchNorm running statistics and affine parameters far from their identity defaults;
    scales drawn from (low, 1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(low, 1)
                m.bias.uniform_(-1, 1)


@pytest.mark.parametrize(("pool", "low", "left"), [("max", 0.1, 0), ("avg", -1, 0), ("max", -1, 2)])
def test_fuse_folds_across_a_pool_only_where_they_commute(pool: str, low: float, left: int) -> None:
    # A BatchNorm folds into the conv before a pool when the pool commutes with its per-channel
    # affine map: always for an average, for a max only if every scale is positive. The two
    # pooled blocks with a negative scale somewhere keep their BatchNorm; the logits never change.
    torch.manual_seed(0)
    options = {"channels": (8, 16, 16), "convs_per_stage": (1, 2, 1), "pool": pool}
    model = build_model("cnn", {**options, "pool_before_norm": True}).eval()
    _random_statistics(model, low)
    images = torch.rand(16, 1, 28, 28)
    fused = fuse(model)
    assert count_batchnorms(fused) == left
    torch.testing.assert_close(fused(images), model(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool": "strided"}, "pool_before_norm needs pool max or avg"),
        ({"residual": True}, "pool_before_norm needs pool max or avg and no residual"),
        ({"stem": -1}, "stem must be >= 0 channels"),
        ({"channels": (2,) * 5, "convs_per_stage": (1,) * 5, "stem": 4}, "4 with a stem"),
    ],
)
def test_pool_before_norm_and_stem_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("cnn", {**TINY, "pool_before_norm": "stem" not in options, **options})


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_global_avg_pool_is_adaptive_avg_pool_that_keeps_the_gradient_layout(
    layout: torch.memory_format,
) -> None:
    x = torch.randn(4, 16, 7, 7).contiguous(memory_format=layout).requires_grad_()
    out = GlobalAvgPool()(x)
    torch.testing.assert_close(out, torch.nn.functional.adaptive_avg_pool2d(x, 1))
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert grad.is_contiguous(memory_format=layout)
    torch.testing.assert_close(grad, (2 * out / 49).expand_as(x))


# --- model show -----------------------------------------------------------------------------


def test_model_show_prints_the_layer_table(capsys: pytest.CaptureFixture[str]) -> None:
    config = CONFIGS / "arch" / "strided.yaml"
    assert main(["model", "show", "--config", str(config), "--set", "model.attention=se"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"features\.1\.first\.0 +Conv2d", out)
    assert "(N, 32, 14, 14)" in out and "(28+2*1-3)//2+1 = 14" in out
    assert "SqueezeExcite" in out
    model = build_model("cnn", dict(load_config(config, ["model.attention=se"]).model.kwargs))
    assert f"cnn: {count_parameters(model):,} parameters" in out


def test_model_show_errors_name_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "show", "--set", "model.pool=lp"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistcnn: error: model.pool: 'lp' is not one of max, avg, strided")
    assert err.count("\n") == 1


@pytest.mark.slow  # a fresh interpreter importing torch; test_model_show_* cover it in-process
def test_model_show_in_a_real_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mnistcnn", "model", "show", "-c", "configs/arch/spatial.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "SpatialAttention" in done.stdout and "(N, 64, 7, 7)" in done.stdout


# --- the presets ----------------------------------------------------------------------------


def test_there_is_a_preset_per_idea() -> None:
    names = {p.stem for p in PRESETS}
    assert {"plain", "residual", "se", "spatial", "groupnorm", "strided", "inverted"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_and_comments_every_value(path: Path) -> None:
    cfg = load_config(path)
    build_model(cfg.model.name, dict(cfg.model.kwargs))
    text = path.read_text()
    assert text.startswith(f"# {path.name}: "), "the first line says what the preset shows"
    bare = [line for line in text.splitlines() if re.match(r"^\s*\w+:\s*\S", line)]
    assert all("#" in line for line in bare), [line for line in bare if "#" not in line]


# --- residual and attention models learn real digits ----------------------------------------


@pytest.mark.parametrize("path", sorted((CONFIGS / "arch").glob("*.yaml")), ids=lambda p: p.stem)
def test_preset_runs_forward_backward_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, dict(cfg.model.kwargs)).train()
    logits = model(torch.rand(4, 1, 28, 28))
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    save_model(model, tmp_path / "m.pth")
    loaded = load_model(tmp_path / "m.pth")
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model.eval()(images), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sets",
    [
        # Two residual blocks per stage at tiny.yaml's Adam rate of 0.01 fluctuate between
        # epochs (measured: 82.6 % after epoch 2, from a better epoch 1); 0.003 gives 92.2 %.
        ("model={residual: true, convs_per_stage: [2, 2, 1]}", "optim.lr=0.003"),
        ("model={attention: both}",),  # SE gates and spatial attention: 93.2 % measured
    ],
    ids=["residual", "attention"],
)
def test_residual_and_attention_models_learn(
    sets: tuple[str, ...], make_cfg: Callable[..., Any], small_splits: Callable[..., Any]
) -> None:
    cfg = make_cfg("train.threads=1", *sets)  # tiny.yaml: 8k images, 2 epochs
    assert cfg.model.kwargs["channels"] == (8, 16, 32)
    result = fit(cfg, splits=small_splits(cfg, 1000), progress=False)
    # Chance is 10 %; tiny.yaml's plain network gets 93.0 % on the full test set.
    assert result["test_accuracy"] > 0.85, result["test_accuracy"]


# --- transfer learning ----------------------------------------------------------------------


def test_init_from_copies_every_tensor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model("cnn", {**TINY, "attention": "se"})
    with torch.no_grad():
        source.train()(torch.rand(8, 1, 28, 28))  # BatchNorm statistics travel too
    save_model(source, tmp_path / "source.pth")
    torch.manual_seed(1)
    # Options without weights (pool, activation) may differ; the description stays the new one.
    target = build_model("cnn", {**TINY, "attention": "se", "pool": "avg", "activation": "gelu"})
    line = init_from(target, tmp_path / "source.pth")
    assert line.startswith("initialized all ")
    for key, value in source.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, target.state_dict()[key]), key
    assert target.args["pool"] == "avg"


def test_init_from_a_different_network_lists_the_mismatches(tmp_path: Path) -> None:
    save_model(build_model("cnn", TINY), tmp_path / "source.pth")
    target = build_model("cnn", {"channels": (4, 16), "convs_per_stage": (1, 1), "attention": "se"})
    with pytest.raises(CheckpointError) as caught:
        init_from(target, tmp_path / "source.pth")
    message = str(caught.value)
    assert (
        "other shapes: features.2.first.0 (weight (8, 4, 3, 3) in the file, (16, 4, 3, 3) here)"
        in message
    )
    assert "layers missing in the file: features.0.se.gate.1, features.0.se.gate.3," in message
    assert message.endswith("layers not in this model: features.0.rest.0.0, features.0.rest.0.1")
    assert "\n" not in message


def test_init_from_refuses_a_training_checkpoint(tmp_path: Path) -> None:
    torch.save({"format": 1, "epoch": 3}, tmp_path / "run.ckpt")
    with pytest.raises(CheckpointError, match=r"needs a model \.pth saved by mnistcnn"):
        init_from(build_model("cnn", TINY), tmp_path / "run.ckpt")


def test_freeze_features_leaves_only_the_classifier_trainable() -> None:
    model = build_model("cnn", TINY)
    frozen = freeze(model, "features")
    assert frozen == sum(p.numel() for p in model.features.parameters())
    assert count_parameters(model) == 8 * 10 + 10
    assert freeze(build_model("cnn", TINY), "none") == 0


def test_cli_fine_tunes_with_frozen_features(
    small_data: Callable[[int], None],
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    small_data(200)
    torch.manual_seed(0)
    source = build_model("cnn", {"channels": (8, 16, 32), "convs_per_stage": (1, 1, 1)})
    with torch.no_grad():
        source.train()(torch.rand(16, 1, 28, 28))
    save_model(source, tmp_path / "pre.pth")
    out = tmp_path / "tuned.pth"
    args = ["train", "-c", str(CONFIGS / "tiny.yaml"), "--data-dir", str(data_dir), "-o", str(out)]
    sets = ["data.subset=300", "train.epochs=1", "train.run_dir=null", "train.device=cpu"]
    sets += ["data.download=false", "train.threads=1"]
    argv = [*args, *(x for s in sets for x in ("--set", s))]
    assert main([*argv, "--init-from", str(tmp_path / "pre.pth"), "--freeze", "features"]) == 0
    logs = capsys.readouterr().out
    tensors = sum(torch.is_tensor(v) for v in source.state_dict().values())
    assert f"initialized all {tensors} weight tensors from {tmp_path / 'pre.pth'}" in logs
    assert "model cnn: 330 parameters" in logs  # only the classifier trains
    tuned = torch.load(out, weights_only=True)
    before = source.state_dict()
    for key, value in before.items():
        if key.startswith("features.") and key.endswith("weight"):
            assert torch.equal(value, tuned[key]), f"{key} was trained"
    # BatchNorm statistics are not frozen: they adapt to the new data (see train.build.freeze).
    assert not torch.equal(
        before["features.0.first.1.running_mean"], tuned["features.0.first.1.running_mean"]
    )
    assert not torch.equal(before["classifier.3.weight"], tuned["classifier.3.weight"])

    # A network that does not fit: one line on stderr, exit 1.
    other = build_model("cnn", {"channels": (4, 8), "convs_per_stage": (1, 1)})
    save_model(other, tmp_path / "other.pth")
    code = main([*argv, "--overwrite", "--init-from", str(tmp_path / "other.pth")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"mnistcnn: error: --init-from {tmp_path / 'other.pth'}: the weights")
    assert "features.0.first.0 (weight (4, 1, 3, 3) in the file, (8, 1, 3, 3) here)" in err
    assert err.count("\n") == 1


# --- the shifted task -----------------------------------------------------------------------


def test_invert_makes_dark_digits_on_white() -> None:
    images = torch.tensor([[[0, 255], [10, 0]]], dtype=torch.uint8)
    flipped = invert(Split(images, torch.tensor([1])))
    assert flipped.images.tolist() == [[[255, 0], [245, 255]]]


def test_invert_refuses_augmentation_that_pads_with_black() -> None:
    with pytest.raises(ConfigError, match=r"data\.invert needs data\.augment"):
        load_config(None, ["data.invert=true"])
    affine_off = ["data.augment.degrees=0", "data.augment.translate=0", "data.augment.scale=0"]
    with pytest.raises(ConfigError, match=r"data\.invert needs .*ink at 0"):
        load_config(None, ["data.invert=true", *affine_off])  # ink thresholds a black background
    assert load_config(None, ["data.invert=true", *affine_off, "data.augment.ink=0"]).data.invert
    assert load_config(CONFIGS / "transfer" / "inverted.yaml").data.invert


# --- export: BatchNorm folding where there is BatchNorm -------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_fuse_folds_batchnorm_and_skips_other_norms(norm: str) -> None:
    torch.manual_seed(0)
    options = {"norm": norm, "residual": True, "attention": "both", "pool": "strided"}
    model = build_model("cnn", {**TINY, **options})
    with torch.no_grad():
        model.train()(torch.rand(8, 1, 28, 28))  # BatchNorm statistics away from their init
    model.eval()
    fused = fuse(model)
    assert count_batchnorms(fused) == 0
    assert count_batchnorms(model) == (3 if norm == "batch" else 0)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), model(images), rtol=1e-4, atol=1e-5)
