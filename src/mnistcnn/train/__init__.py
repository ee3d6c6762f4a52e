"""Training: build (device, starting weights, loss, optimizer, schedule), loops (train/evaluate),
fitting (`fit`, the orchestrator: checkpoints, RNGs, resume) and distributed."""
