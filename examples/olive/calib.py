"""Calibration data for examples/olive/config.json (`"calib": "examples/olive/calib.py:batches"`).

A stand-in for real data: replace `batches` with one that yields feed dicts of the inputs
your model sees in deployment (or give an .npz file, or a folder of images with
`calib_preprocess`). Each feed dict is one batch as the model takes it: samples/tiny_resnet.onnx
has a static batch of 1."""
import numpy as np


def batches():
    rng = np.random.default_rng(0)
    for _ in range(16):
        yield {"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
