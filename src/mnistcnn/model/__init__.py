"""The model: layers, the registered networks (nets), `model show`'s summary, BatchNorm fusion.

A saved `.pth` is the model's state_dict and describes itself (see `nets.DigitNet`).
"""
