"""Issue 13 §3: per-layer kernel choices are also compared against ONNX Runtime's dense
kernel for the same layer (a one-node model at the layer's shape), not only TVM's."""
from __future__ import annotations

import types

import numpy as np
import pytest

from graphprune.backends.tvm.kernels.ort_dense import layer_model, ort_dense_ms
from graphprune.runtime import ort


def _layer(kind, x_shape, weight, bias=None, relu=False, conv_attrs=None):
    return types.SimpleNamespace(kind=kind, name="l", x_shape=x_shape, weight=weight, bias=bias, relu=relu,
                                 conv_attrs=conv_attrs)


def test_linear_layer_model_computes_the_layer():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    got = ort.session(layer_model(_layer("linear", (2, 3, 5), w, b, relu=True))).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(x @ w.T + b, 0), rtol=1e-5, atol=1e-5)
    got = ort.session(layer_model(_layer("linear", (2, 3, 5), w))).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-5)


def test_conv_layer_model_uses_tvm_padding_order_strides_and_groups():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((4, 2, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((1, 4, 9, 8)).astype(np.float32)
    attrs = {"strides": (2, 1), "padding": (1, 0, 2, 1), "dilation": (1, 1), "groups": 2}  # top, left, bottom, right
    got = ort.session(layer_model(_layer("conv2d", x.shape, w, b, conv_attrs=attrs))).run(None, {"x": x})[0]
    padded = torch.nn.functional.pad(torch.from_numpy(x), (0, 1, 1, 2))  # (left, right, top, bottom)
    ref = torch.nn.functional.conv2d(padded, torch.from_numpy(w), torch.from_numpy(b), stride=(2, 1), groups=2)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_ort_dense_ms_times_the_layer():
    w = np.ones((8, 16), np.float32)
    assert ort_dense_ms(_layer("linear", (4, 16), w), threads=1, runs=3) > 0
