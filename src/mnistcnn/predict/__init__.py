"""Image files in, digits out: torch models (classify), ONNX models (onnx), the file loop."""
