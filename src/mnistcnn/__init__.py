"""mnistcnn: train, evaluate and use convolutional networks on handwritten digits."""

__version__ = "0.1.0"
