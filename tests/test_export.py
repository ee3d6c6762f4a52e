"""Export: BatchNorm folding, ONNX and TorchScript files that agree with the `.pth` on the real test
set, int8 post-training quantization within 0.3 points, the embedded metadata, the torch-free
`predict --model X.onnx` path, and the export errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mnistcnn import export
from mnistcnn.checkpoint import load_model, save_model
from mnistcnn.cli import main
from mnistcnn.data import to_float
from mnistcnn.errors import ExportError
from mnistcnn.export import export_model
from mnistcnn.export.formats import runner
from mnistcnn.model.nets import build_model
from mnistcnn.model.summary import count_batchnorms, fuse


@pytest.fixture(scope="module")
def untrained_pth(tmp_path_factory: Any) -> Path:
    """tiny.yaml's network (three BatchNorms), untrained but with moved statistics, saved."""
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [8, 16, 32], "convs_per_stage": [1, 1, 1]})
    with torch.no_grad():
        model.train()(torch.rand(16, 1, 28, 28))
    path = tmp_path_factory.mktemp("untrained") / "untrained.pth"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def test_images(mnist_test: Any) -> np.ndarray:
    """The 10k test images as the exported graphs take them: float32 (N, 1, 28, 28) in [0, 1]."""
    return to_float(mnist_test.images).numpy()


@pytest.fixture(scope="module")
def digit_onnx(digit_model_run: dict, data_dir: Path, tmp_path_factory: Any) -> tuple[Path, Any]:
    """The ~98 % model exported to ONNX (unfused) and the export's report."""
    out = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    return out, export_model(digit_model_run["path"], out, fmt="onnx", data_dir=data_dir)


def logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images)).numpy()


@pytest.mark.slow
def test_fuse_folds_every_batchnorm_within_1e5_on_the_test_set(
    tiny_run: dict, test_images: np.ndarray
) -> None:
    model = load_model(tiny_run["path"])
    fused = fuse(model)
    assert count_batchnorms(model) == 3 and count_batchnorms(fused) == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    diff = np.abs(logits(fused, test_images) - logits(model, test_images)).max()
    assert diff <= 1e-5, diff
    assert count_batchnorms(model) == 3  # the source model is left as it was


def test_fuse_handles_residual_stages_and_linear_batchnorm() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [8, 16], "convs_per_stage": [2, 3], "residual": True})
    with torch.no_grad():  # BatchNorm statistics far from the defaults, as after training
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.2, 3)
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
    model.eval()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU()).eval()
    with torch.no_grad():
        mlp[2].running_mean.uniform_(-1, 1)
        mlp[2].running_var.uniform_(0.2, 3)
    images = torch.rand(64, 1, 28, 28).numpy()
    for net in (model, mlp):
        fused = fuse(net)
        assert count_batchnorms(net) > 0 and count_batchnorms(fused) == 0
        assert np.abs(logits(fused, images) - logits(net, images)).max() <= 1e-5
    plain = build_model("baseline", {"channels": [4, 8], "hidden": 16}).eval()
    assert np.array_equal(logits(fuse(plain), images), logits(plain, images))


@pytest.mark.slow
def test_onnx_matches_pytorch_on_the_trained_model(
    digit_onnx: tuple[Path, Any], digit_model: Any, mnist_test: Any, test_images: np.ndarray
) -> None:
    path, report = digit_onnx
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a dynamic batch dimension
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": test_images})[0]
    expected = logits(digit_model, test_images)
    assert np.abs(got - expected).max() <= 1e-4
    labels = mnist_test.labels.numpy()
    accuracy = (got.argmax(1) == labels).mean()
    assert accuracy == (expected.argmax(1) == labels).mean() > 0.97
    assert report.accuracy == report.source_accuracy == accuracy and report.images == 10_000
    for n in (1, 3):  # any batch size runs
        assert session.run(None, {"images": test_images[:n]})[0].shape == (n, 10)


@pytest.mark.slow
def test_onnx_metadata_is_all_a_consumer_needs(
    digit_onnx: tuple[Path, Any], digit_model: Any
) -> None:
    meta = {p.key: p.value for p in onnx.load(digit_onnx[0]).metadata_props}
    assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
    assert (meta["input"], meta["output"], meta["input_range"]) == ("images", "logits", "0,1")
    norm = json.loads(meta["normalization"])
    assert (norm["mean"], norm["std"], norm["in_graph"]) == (
        digit_model.mean,
        digit_model.std,
        True,
    )
    assert meta["arch"] == "baseline" and json.loads(meta["args"]) == digit_model.args
    assert json.loads(meta["training"])["test_accuracy"] > 0.97


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    ("fmt", "run"),
    [("onnx", "digit_model_run"), ("torchscript", "digit_model_run"), ("torchscript", "tiny_run")],
)
def test_int8_loses_at_most_0_3_points(
    fmt: str,
    run: str,
    request: pytest.FixtureRequest,
    data_dir: Path,
    mnist_test: Any,
    test_images: np.ndarray,
    tmp_path: Path,
) -> None:
    # The ~98 % model through both quantizers; the BatchNorm CNN through torch.ao FX, whose
    # Conv+BN+ReLU patterns and x86 kernels are the more fragile path.
    pth = request.getfixturevalue(run)["path"]
    out = tmp_path / f"int8.{'onnx' if fmt == 'onnx' else 'pt'}"
    report = export_model(pth, out, fmt=fmt, fuse_bn=True, quantize="int8", data_dir=data_dir)
    accuracy = runner(fmt, out.read_bytes())(test_images).argmax(1) == mnist_test.labels.numpy()
    assert accuracy.mean() == pytest.approx(report.accuracy)
    # Loses at most 0.3 points, counted in images (a float difference of 30 in 10,000 can exceed
    # 0.003); on the weak tiny model rounding can also win a few digits.
    lost = round((report.source_accuracy - report.accuracy) * report.images)
    assert lost <= 0.003 * report.images, report
    assert abs(report.accuracy - report.source_accuracy) <= 0.01, report
    assert report.calibration == 1000
    # int8 weights: smaller, not only different (a TorchScript archive's code is a fixed cost)
    assert report.bytes < (0.5 if run == "digit_model_run" else 0.9) * report.float_bytes
    if fmt == "onnx":
        ops = {node.op_type for node in onnx.load(out).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    else:
        extra = {"mnistcnn.json": ""}
        torch.jit.load(out, _extra_files=extra)
        assert json.loads(extra["mnistcnn.json"])["quantize"] == "int8"


def test_cli_export_torchscript_without_data(
    untrained_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.pt"
    args = ["export", str(untrained_pth), "-f", "torchscript", "--fuse", "-o", str(out)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checked_on"] == "noise" and report["accuracy"] is None
    assert report["max_abs_diff"] <= 1e-4 and report["folded"] == 3 and out.is_file()
    assert main([*args, "--overwrite"]) == 0
    assert "3 BatchNorm folded" in capsys.readouterr().out


def test_onnx_export_without_data_is_checked_on_noise(untrained_pth: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    report = export_model(untrained_pth, out, fmt="onnx", fuse_bn=True)
    assert (report.checked_on, report.images, report.accuracy) == ("noise", 256, None)
    assert report.max_abs_diff <= 1e-4 and report.folded == 3
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert (meta["arch"], meta["fused"], meta["quantize"]) == ("cnn", "true", "none")
    assert runner("onnx", out.read_bytes())(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)


@pytest.mark.slow
def test_predict_onnx_matches_pth_without_importing_torch(
    digit_onnx: tuple[Path, Any],
    digit_model_run: dict,
    mnist_test: Any,
    draw: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for i in range(6):
        image = mnist_test.images[i].numpy()
        draw(image, tmp_path / f"{i}.png", canvas=120, height=80, at=(20, 20), style="RGB")
    pth = str(digit_model_run["path"])
    assert main(["predict", str(tmp_path), "-m", pth, "-k", "3", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    code = (
        "import json, sys; from mnistcnn.cli import main; "
        f"rc = main(['predict', {str(tmp_path)!r}, '-m', {str(digit_onnx[0])!r}, '-k', '3', "
        "'--json']); print(json.dumps(['torch' in sys.modules, rc]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    predictions, flags, _ = done.stdout.rsplit("\n", 2)
    assert json.loads(flags) == [False, 0]  # torch never imported on the .onnx path
    got = json.loads(predictions)
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert [p["label"] for p in got] == mnist_test.labels[:6].tolist()
    for g, e in zip(got, expected, strict=True):
        assert [k for k, _ in g["top"]] == [k for k, _ in e["top"]]
        assert g["low_confidence"] == e["low_confidence"]
        assert np.allclose([v for _, v in g["top"]], [v for _, v in e["top"]], atol=1e-5)


def test_export_errors(
    untrained_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pth = str(untrained_pth)
    out = tmp_path / "m.onnx"
    assert main(["export", pth, "-f", "onnx", "--quantize", "int8", "-o", str(out)]) == 1
    assert "mnistcnn: error: --quantize int8 calibrates on MNIST" in capsys.readouterr().err
    out.write_bytes(b"old")
    assert main(["export", pth, "-f", "onnx", "-o", str(out)]) == 1
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
    assert main(["export", pth, "-f", "keras", "-o", str(out)]) == 2
    assert main(["export", pth, "-f", "onnx", "-o", pth, "--overwrite"]) == 1
    assert "would replace the model being exported" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_onnx_errors(
    digit_onnx: tuple[Path, Any],
    draw: Any,
    seven: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "7.png"
    draw(seven, image, canvas=100, height=70, at=(15, 15), style="L")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    assert main(["predict", str(image), "-m", str(bad)]) == 1
    assert "mnistcnn: error: not a readable ONNX model" in capsys.readouterr().err
    assert main(["predict", str(image), "-m", str(tmp_path / "none.onnx")]) == 1
    assert "model file not found" in capsys.readouterr().err
    proto = onnx.load(digit_onnx[0])
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    assert main(["predict", str(image), "-m", str(bare)]) == 1
    assert "not an mnistcnn export" in capsys.readouterr().err
    assert main(["predict", str(image), "-m", str(digit_onnx[0]), "--tta"]) == 1
    assert capsys.readouterr().err.startswith("mnistcnn: error: --tta works with a .pth model")


@pytest.mark.slow
def test_predict_onnx_folder_in_process(
    digit_onnx: tuple[Path, Any],
    mnist_test: Any,
    draw: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    for i in range(3):
        digit = mnist_test.images[i].numpy()
        draw(digit, images / f"{i}.png", canvas=90, height=60, at=(15, 15), style="L")
    (images / "broken.png").write_bytes(b"not an image")
    seen, kinds = tmp_path / "seen", (".png", ".steps.png")  # as the .pth path writes them
    args = ["predict", str(images), "-m", str(digit_onnx[0]), "--save-preprocessed", str(seen)]
    assert main(args) == 1  # one file failed; the others are still answered
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and captured.err.startswith("mnistcnn: error:")
    lines = captured.out.splitlines()
    assert [line.split(": ")[1][0] for line in lines] == [
        str(int(d)) for d in mnist_test.labels[:3]
    ]
    assert {p.name for p in seen.iterdir()} == {f"{i}{s}" for i in range(3) for s in kinds}


@pytest.mark.slow
def test_export_library_errors(
    tiny_run: dict, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pth, out = tiny_run["path"], tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="unknown format 'keras'"):
        export_model(pth, out, fmt="keras")
    with pytest.raises(ExportError, match="unknown quantization 'int4'"):
        export_model(pth, out, fmt="onnx", quantize="int4", data_dir=data_dir)
    with pytest.raises(ExportError, match="at least 1 image"):
        export_model(pth, out, fmt="onnx", quantize="int8", data_dir=data_dir, calibration=0)
    monkeypatch.setattr(export, "FLOAT_TOLERANCE", 0.0)  # any rounding now counts as a mismatch
    with pytest.raises(ExportError, match=r"disagrees with .* nothing written"):
        export_model(pth, out, fmt="onnx")
    assert not out.exists()
