"""Linear-layer helpers: conv patches equal the convolution (pads, strides, dilations,
groups), sampled rows equal the full ones, per-input-channel weight blocks."""
from __future__ import annotations

import numpy as np
from onnx import helper

import graphprune as gp
from graphprune.importance.layers import conv_patches, im2col, linear_layers, num_positions
from graphprune.runtime.ort import session
from helpers import make_model


def conv(w, x_shape, **attrs):
    m = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="c", **attrs)], [("x", x_shape)],
                   [("y", None)], {"w": w}, check=False)
    return gp.load(m.SerializeToString())


def test_im2col_is_the_convolution():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    model = conv(w, [2, 4, 9, 8], kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])
    node = next(iter(model.graph))
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    y = session(model).run(None, {"x": x})[0]
    p = im2col(x, node, w.shape)
    assert len(p) == num_positions(x.shape, node, w.shape)
    np.testing.assert_allclose(p.reshape(len(p), -1) @ w.reshape(6, -1).T, np.moveaxis(y, 1, -1).reshape(-1, 6),
                               atol=1e-4)
    rows = np.array([0, 7, len(p) - 1])
    np.testing.assert_array_equal(im2col(x, node, w.shape, rows), p[rows])


def test_grouped_patches_and_weight_blocks():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)  # 6 inputs, 2 groups of 3 -> 2 outputs each
    model = conv(w, [1, 6, 2, 2], kernel_shape=[1, 1], group=2)
    lin = linear_layers(model)[0]
    x = rng.standard_normal((1, 6, 2, 2)).astype(np.float32)
    p = conv_patches(x, lin.node, w.shape, 2)
    assert p.shape == (4, 2, 3)
    y = session(model).run(None, {"x": x})[0]
    for g in range(2):
        np.testing.assert_allclose(p[:, g, :] @ w[2 * g:2 * g + 2, :, 0, 0].T,
                                   np.moveaxis(y, 1, -1).reshape(-1, 4)[:, 2 * g:2 * g + 2], atol=1e-5)
    # input channel 4 (group 1, position 1) is multiplied by outputs 2,3 at position 1
    blocks = lin.per_input_channel(lambda b: b.copy())
    np.testing.assert_array_equal(blocks[4][:, 0], w[2:4, 1, 0, 0])
