"""Image files in, digits out: the file loop (files), torch models (classify, number, tta,
explain) and ONNX models (onnx). Import-free: the ONNX path never imports torch."""
