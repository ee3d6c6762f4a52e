"""A photo of a digit (or a row of digits) -> the 28x28 MNIST-style images the model expects.

A module per step: decode, lines (erase ruled lines), ink (flatten the light, find the pieces),
digit (choose and redraw it, the steps' panel), row (a number's digits). PIL, numpy and scipy
only: no torchvision (start-up time).
"""
