"""graphprune.ir.quant: the float value of a QDQ weight, and the zero-point masking fill."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import graphprune as gp
from graphprune.ir.quant import dequantized_const, masking_fill, power_of_two_scales, qdq_scales, zero_point_fill
from helpers import make_model


def _model(extra_use=False, second_zp=None):
    q = np.arange(24, dtype=np.int8).reshape(4, 6) - 12
    inits = {"q": q, "s": np.array([0.5, 1.0, 2.0, 4.0], np.float32), "z": np.array([1, -2, 0, 3], np.int8),
             "z2": np.array(second_zp if second_zp is not None else [0, 0, 0, 0], np.int8)}
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], name="dq", axis=0),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    outputs = [("y", [2, 6])]
    if extra_use:
        nodes.append(helper.make_node("Cast", ["q"], ["qf"], name="cast", to=1))
        outputs.append(("qf", [4, 6]))
    if second_zp is not None:
        nodes.append(helper.make_node("DequantizeLinear", ["q", "s", "z2"], ["w2"], name="dq2", axis=0))
        outputs.append(("w2", [4, 6]))
    return gp.load(make_model(nodes, [("x", [2, 4])], outputs, inits).SerializeToString(), fold=False), q


def test_dequantized_const_is_the_spec_formula():
    m, q = _model()
    w = next(n for n in m.graph if n.name == "dq").outputs[0]
    expect = (q.astype(np.float64) - np.array([1, -2, 0, 3])[:, None]) * np.array([0.5, 1, 2, 4])[:, None]
    np.testing.assert_array_equal(dequantized_const(w), expect.astype(np.float32))
    assert dequantized_const(m.graph.inputs[0]) is None


def test_zero_point_fill_dequantizes_to_zero():
    m, q = _model()
    v = m.graph.initializers["q"]
    fill = masking_fill(v)
    assert fill.shape == q.shape and fill.dtype == np.int8
    np.testing.assert_array_equal(fill[:, 0], [1, -2, 0, 3])
    assert zero_point_fill((4, 6), np.zeros(4, np.int8), 0) is None  # zero points 0: plain zeros are exact
    assert masking_fill(m.graph.initializers["s"]) is None  # not read as quantized data


@pytest.mark.parametrize("kw, msg", [({"extra_use": True}, "by other ops"),
                                     ({"second_zp": [0, 1, 0, 0]}, "different zero points")])
def test_ambiguous_masking_raises(kw, msg):
    m, _ = _model(**kw)
    with pytest.raises(ValueError, match=msg):
        masking_fill(m.graph.initializers["q"])


def test_same_zero_points_twice_is_fine():
    m, _ = _model(second_zp=[1, -2, 0, 3])
    assert masking_fill(m.graph.initializers["q"]) is not None
    assert isinstance(m.graph.initializers["q"], ir.Value)


def test_power_of_two_scales_rounds_each_qdq_scale_once_and_keeps_zeros():
    """Nearest power of two in log scale (0.7 -> 0.5, 3.0 -> 4.0), a zero scale stays zero,
    a scale shared by two DequantizeLinear nodes is one scale; other constants untouched."""
    q = np.ones((4, 6), np.int8)
    inits = {"q": q, "s": np.array([0.7, 3.0, 0.0, 1.0], np.float32), "z": np.zeros(4, np.int8),
             "k": np.full((2, 6), 0.7, np.float32), "s0": np.array(0.3, np.float32), "z0": np.array(0, np.int8)}
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], name="dq", axis=0),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w2"], name="dq2", axis=0),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Add", ["y", "k"], ["out"], name="add"),
             helper.make_node("QuantizeLinear", ["out", "s0", "z0"], ["out_q"], name="q")]
    m = gp.load(make_model(nodes, [("x", [2, 4])], [helper.make_tensor_value_info("out_q", TensorProto.INT8, [2, 6]), ("w2", [4, 6])], inits).SerializeToString(),
                fold=False)
    assert [v.name for v in qdq_scales(m)] == ["s", "s0"]
    assert power_of_two_scales(m) == 2
    s0 = m.graph.initializers["s0"].const_value.numpy()
    assert s0.shape == () and s0 == np.float32(0.25)  # a scalar scale stays a scalar
    np.testing.assert_array_equal(m.graph.initializers["s"].const_value.numpy(), np.float32([0.5, 4.0, 0.0, 1.0]))
    np.testing.assert_array_equal(m.graph.initializers["k"].const_value.numpy(), inits["k"])
    assert power_of_two_scales(m) == 0  # already powers of two
