"""Image files in, digits out: the file loop and ONNX models (files), torch models (classify),
rows of digits (number). Import-free: the ONNX path never imports torch."""
