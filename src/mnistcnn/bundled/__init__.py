"""The model in the wheel (the base recipe, seed 0) and which model a command uses when not told.

`python benchmarks/bundled.py --write` retrains `base.pth` from configs/base.yaml on the CPU."""

from __future__ import annotations

from pathlib import Path

BUNDLED = Path(__file__).with_name("base.pth")
TRAINED = Path("models/cnn.pth")  # `mnistcnn train`'s default output


def default_model() -> tuple[Path, str]:
    """models/cnn.pth when it exists, else the bundled model; and a note saying which."""
    if TRAINED.exists():  # a folder there is reported as one by the loader
        return TRAINED, f"mnistcnn: using {TRAINED} (no model given)"
    return BUNDLED, f"mnistcnn: no model given, no {TRAINED}: using the bundled model (base recipe)"
