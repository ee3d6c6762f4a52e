"""Model files: atomic writes, weights_only loading, and one clear error per kind of bad file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from mnistcnn import checkpoint
from mnistcnn.checkpoint import load_model, load_state, save_model
from mnistcnn.errors import CheckpointError
from mnistcnn.files import atomic_write_text
from mnistcnn.model.nets import FORMAT_VERSION, DigitNet, build_model


def small_model() -> DigitNet:
    torch.manual_seed(0)
    return build_model("cnn", {"channels": (4, 8), "convs_per_stage": (1, 1)})


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.pth"
    save_model(small_model(), path)
    return path


class Marker:
    """Unpickling this would create a file: proof that loading ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


# --- saving --------------------------------------------------------------------------------


def test_save_then_load_gives_the_same_model_in_eval_mode(saved: Path) -> None:
    model = small_model().eval()
    loaded = load_model(saved)
    assert not loaded.training
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "model.pth"  # parents are created
    save_model(small_model(), path)
    save_model(small_model(), path)  # and replaced
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pth"]


def test_saved_file_has_the_usual_permissions(saved: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_leaves_the_old_file_untouched(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a zip")  # a partial write, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_model(build_model("baseline", {"channels": (2, 2), "hidden": 2}), saved)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pth"]


def test_interrupted_save_leaves_the_old_file_untouched(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()

    def interrupted(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(small_model(), saved)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pth"]


def test_atomic_write_text(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    atomic_write_text(path, "one: 1\n")
    atomic_write_text(path, "two: 2\n")
    assert path.read_text() == "two: 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.yaml"]


def test_saved_tensors_are_on_the_cpu_and_plain(saved: Path) -> None:
    state = torch.load(saved, weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values() if torch.is_tensor(v))
    assert state["_extra_state"]["arch"] == "cnn"


# --- loading: each bad file has its own message ---------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model file not found") as info:
        load_model(tmp_path / "nope.pth")
    assert "nope.pth" in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        load_model(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").touch()
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_model(tmp_path / "empty.pth")


def test_truncated_checkpoint(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt") as info:
        load_model(saved)
    assert str(saved) in str(info.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_called_corrupt_not_dangerous(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "random.pth"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed))
        .to(torch.uint8)
        .numpy()
        .tobytes()
    )
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "corrupt" in message and str(path) in message
    assert "run code" not in message  # garbage is not a pickle with code in it


@pytest.mark.parametrize(
    "text",
    [
        b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n",
        b"https://example.com/models/cnn.pth\n",
        b"<html>404 Not Found</html>",
    ],
    ids=["lfs-pointer", "url", "html"],
)
def test_text_file_is_a_checkpoint_error(tmp_path: Path, text: bytes) -> None:
    # e.g. a Git LFS pointer or an HTML error page saved as model.pth
    path = tmp_path / "model.pth"
    path.write_bytes(text)
    with pytest.raises(CheckpointError, match=r"model\.pth"):
        load_model(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"weight": Marker(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match="refusing to load") as info:
        load_model(path)
    assert "could run code" in str(info.value)
    assert not marker.exists()


def test_torch_saved_file_with_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = dict(small_model().state_dict())
    state["_extra_state"] = Marker(marker)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(path)
    assert not marker.exists()


def test_file_that_is_not_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        load_model(path)


def test_state_dict_without_extra_state(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    state = {k: v for k, v in small_model().state_dict().items() if k != "_extra_state"}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="no _extra_state") as info:
        load_model(path)
    assert str(path) in str(info.value)


def save_with_extra(path: Path, **changes: Any) -> Path:
    state = dict(small_model().state_dict())
    state["_extra_state"] = {**state["_extra_state"], **changes}
    torch.save(state, path)
    return path


def test_extra_state_that_is_not_a_description(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    state = dict(small_model().state_dict())
    state["_extra_state"] = {"arch": "cnn"}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="not an mnistcnn model description"):
        load_model(path)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = save_with_extra(tmp_path / "m.pth", arch="transformer")
    with pytest.raises(CheckpointError, match="unknown architecture 'transformer'; known: "):
        load_model(path)


def test_future_format_version(tmp_path: Path) -> None:
    path = save_with_extra(tmp_path / "m.pth", format=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match=f"model format {FORMAT_VERSION + 1}.*upgrade"):
        load_model(path)


def test_wrong_shapes(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    state = dict(small_model().state_dict())
    name = next(k for k, v in state.items() if torch.is_tensor(v) and v.dim() == 4)
    state[name] = torch.zeros(3, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="weights do not fit the cnn model") as info:
        load_model(path)
    assert name in str(info.value) and str(path) in str(info.value)


def test_missing_weights(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    state = dict(small_model().state_dict())
    del state[next(k for k in state if k.endswith("weight"))]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(path)


def test_model_arguments_the_model_does_not_take(tmp_path: Path) -> None:
    args = {**small_model().args, "depth": 50}
    path = save_with_extra(tmp_path / "m.pth", args=args)
    with pytest.raises(CheckpointError, match="model description is invalid"):
        load_model(path)


@pytest.mark.parametrize(
    "change", [{"channels": [-4, 8]}, {"channels": ["a", "b"]}, {"kernel_size": "3"}]
)
def test_model_arguments_of_the_wrong_kind(tmp_path: Path, change: dict) -> None:
    # A hand-edited or foreign file must give a CheckpointError, not a torch traceback.
    path = save_with_extra(tmp_path / "m.pth", args={**small_model().args, **change})
    with pytest.raises(CheckpointError):
        load_model(path)


def test_load_state_returns_the_plain_dict(saved: Path) -> None:
    state = load_state(saved)
    assert isinstance(state, dict) and "_extra_state" in state
