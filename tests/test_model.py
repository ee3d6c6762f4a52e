"""Models: shapes, the registry, the self-describing state_dict, and argument errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mnistcnn.checkpoint import save_model
from mnistcnn.data import Split
from mnistcnn.errors import CheckpointError, ConfigError
from mnistcnn.model.layers import conv_out
from mnistcnn.model.nets import FORMAT_VERSION, MODELS, NUM_CLASSES, build_model, model_from_state
from mnistcnn.model.summary import (
    CPU_BATCH_BYTES,
    DEVICE_BATCH,
    count_parameters,
    inference_batch,
    largest_map,
)
from mnistcnn.train.loops import predict_logits

ARCHS = [
    ("baseline", {}),
    ("baseline", {"channels": (4, 8), "hidden": 16, "dropout": (0.0, 0.0)}),
    ("cnn", {}),
    ("cnn", {"channels": (8, 16), "convs_per_stage": (1, 1)}),
    ("cnn", {"channels": (4, 8, 8, 16), "convs_per_stage": (1, 2, 1, 1)}),
    ("cnn", {"channels": (8, 8), "convs_per_stage": (3, 2), "residual": True}),
    ("cnn", {"channels": (8, 16), "convs_per_stage": (2, 1), "batch_norm": False}),
    ("cnn", {"channels": (4,) * 5, "convs_per_stage": (1,) * 5, "kernel_size": 5}),
]


def ids(arch: tuple[str, dict[str, Any]]) -> str:
    name, kwargs = arch
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items()).replace(" ", "")


def test_every_registered_model_is_covered() -> None:
    assert {name for name, _ in ARCHS} == set(MODELS)


@pytest.mark.parametrize("arch", ARCHS, ids=ids)
@pytest.mark.parametrize("n", [1, 3])
def test_forward_gives_logits_for_a_batch(arch: tuple[str, dict[str, Any]], n: int) -> None:
    torch.manual_seed(0)
    model = build_model(*arch).eval()
    with torch.no_grad():
        logits = model(torch.rand(n, 1, 28, 28))
    assert logits.shape == (n, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS, ids=ids)
def test_train_mode_backward(arch: tuple[str, dict[str, Any]]) -> None:
    model = build_model(*arch).train()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_channels_last_input_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": (8, 16), "convs_per_stage": (1, 1)}).eval()
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        plain = model(images)
        nhwc = model.to(memory_format=torch.channels_last)(
            images.contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(plain, nhwc, rtol=1e-4, atol=1e-5)


def test_model_normalizes_its_input() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": (4,), "convs_per_stage": (1,)}, mean=0.5, std=2.0)
    model.eval()
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(images), model.logits((images - 0.5) / 2.0))


def test_state_dict_describes_the_model() -> None:
    model = build_model("cnn", {"channels": (8, 16), "convs_per_stage": (1, 1)}, 0.2, 0.4)
    extra = model.state_dict()["_extra_state"]
    assert extra["format"] == FORMAT_VERSION
    assert extra["arch"] == "cnn"
    # every argument is recorded, defaults included, as plain lists (weights_only-safe)
    assert extra["args"] == {
        "channels": [8, 16],
        "convs_per_stage": [1, 1],
        "kernel_size": 3,
        "batch_norm": True,
        "dropout": 0.1,
        "residual": False,
        "norm": "batch",
        "attention": "none",
        "pool": "max",
        "activation": "relu",
        "pool_before_norm": False,
        "stem": 0,
    }
    assert (extra["mean"], extra["std"]) == (0.2, 0.4)
    assert extra["meta"] == {}


@pytest.mark.parametrize("arch", ARCHS[:2] + ARCHS[5:7], ids=ids)
def test_saved_file_opens_weights_only_and_rebuilds_an_equal_model(
    arch: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build_model(*arch, mean=0.25, std=0.5)
    model.meta = {"epoch": 3, "val_accuracy": 0.5}
    # Move BatchNorm statistics away from their init so that they must round-trip too.
    with torch.no_grad():
        model.train()(torch.rand(8, 1, 28, 28))
    path = tmp_path / "m.pth"
    save_model(model, path)

    state = torch.load(path, weights_only=True)
    rebuilt = model_from_state(state)
    assert type(rebuilt) is type(model)
    assert rebuilt.args == model.args
    assert (rebuilt.mean, rebuilt.std, rebuilt.meta) == (0.25, 0.5, model.meta)
    for key, value in model.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, rebuilt.state_dict()[key]), key
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), rebuilt.eval()(images))


def test_load_state_dict_into_a_different_architecture_is_refused() -> None:
    small = build_model("cnn", {"channels": (4, 8), "convs_per_stage": (1, 1)})
    other = build_model("cnn", {"channels": (4, 8), "convs_per_stage": (1, 1), "residual": True})
    with pytest.raises(CheckpointError, match="weights are for cnn"):
        other.load_state_dict(small.state_dict())


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet", {}, "unknown name 'resnet'; valid: baseline, cnn"),
        ("cnn", {"width": 3}, "width"),
        ("cnn", {"channels": ()}, "convs_per_stage"),
        ("cnn", {"channels": (8, 16)}, "convs_per_stage"),
        ("cnn", {"channels": (8,), "convs_per_stage": (0,)}, "convs_per_stage"),
        ("cnn", {"kernel_size": 4}, "kernel_size"),
        ("cnn", {"dropout": 1.0}, "dropout"),
        ("cnn", {"channels": (4,) * 6, "convs_per_stage": (1,) * 6}, "at most 5 stages"),
        ("baseline", {"channels": (8, 16, 32)}, "two channels"),
        ("baseline", {"dropout": (0.5,)}, "two dropout"),
    ],
)
def test_bad_model_arguments_are_config_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("cnn", {"channels": (-8,), "convs_per_stage": (1,)}),
        ("cnn", {"kernel_size": -1}),
        ("cnn", {"dropout": -0.5}),
        ("baseline", {"hidden": -1}),
        ("baseline", {"dropout": (0.5, 5.0)}),
    ],
)
def test_impossible_sizes_and_rates_are_config_errors(name: str, kwargs: dict) -> None:
    # Values a user can type with --set model.KEY=...; a torch traceback is a bug.
    with pytest.raises(ConfigError):
        build_model(name, kwargs)


def test_conv_out_formula() -> None:
    assert conv_out(28, 3) == 26
    assert conv_out(28, 3, padding=1) == 28
    assert conv_out(28, 2, stride=2) == 14
    assert conv_out(7, 2, stride=2) == 3


def test_count_parameters() -> None:
    model = build_model("baseline", {"channels": (2, 3), "hidden": 4})
    # conv 1->2 (3x3) + conv 2->3 (3x3) + fc 3*12*12->4 + fc 4->10, with biases
    expected = (9 * 2 + 2) + (9 * 2 * 3 + 3) + (3 * 144 * 4 + 4) + (4 * 10 + 10)
    assert count_parameters(model) == expected


def test_inference_batches_are_sized_to_the_largest_feature_map() -> None:
    fast = {"stem": 16, "channels": (32, 64), "convs_per_stage": (2, 1), "pool_before_norm": True}
    model = build_model("cnn", fast).train()
    assert largest_map(model) == 32 * 14 * 14  # the 14 px convs' outputs, before their pool
    assert model.training  # measured in eval mode, the mode left as it was
    cpu = torch.device("cpu")
    assert inference_batch(model, cpu) == CPU_BATCH_BYTES // (32 * 14 * 14 * 4)
    assert inference_batch(model, cpu, views=7) == CPU_BATCH_BYTES // (7 * 32 * 14 * 14 * 4)
    assert inference_batch(model, torch.device("cuda")) == DEVICE_BATCH  # no CUDA needed to ask
    wide = build_model("cnn", {"channels": (512,), "convs_per_stage": (1,)})
    assert inference_batch(wide, cpu) == 16  # a floor, however wide the maps
    tiny = build_model("cnn", {"channels": (1,), "convs_per_stage": (1,), "stem": 1})
    assert inference_batch(tiny, cpu) == DEVICE_BATCH  # a ceiling, however small


def test_the_batch_size_does_not_change_the_logits() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": (8, 16), "convs_per_stage": (1, 1)}).eval()
    images = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8)
    split = Split(images, torch.zeros(300, dtype=torch.long))
    cpu = torch.device("cpu")
    auto = predict_logits(model, split, 0, cpu)
    torch.testing.assert_close(predict_logits(model, split, 7, cpu), auto)
    torch.testing.assert_close(predict_logits(model, split, 300, cpu), auto)


def test_the_bundled_file_loads_weights_only_into_this_code() -> None:
    from mnistcnn.bundled import BUNDLED
    from mnistcnn.model.summary import format_layer_table, fuse

    state = torch.load(BUNDLED, weights_only=True)
    model = model_from_state(state).eval()
    assert model.arch == "cnn" and model.args == state["_extra_state"]["args"]
    assert list(model.state_dict()) == list(state)  # the same keys, in the same order
    assert format_layer_table(model).splitlines()[-1].startswith("cnn: 140,458 parameters")
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fuse(model)(images), model(images), rtol=1e-4, atol=1e-5)
