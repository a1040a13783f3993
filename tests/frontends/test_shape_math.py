"""The integer shape arithmetic folded in numpy (frontends/shape_math.py) gives what ONNX's
reference evaluator gives, bit for bit, in every form it takes — except opset < 13
Unsqueeze with unsorted axes, where the evaluator departs from the spec and ONNX Runtime
(checked against ORT below); other forms are left to the evaluator (None)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from graphprune.frontends import shape_math

I64 = np.int64


def _reference(proto, inputs, opset):
    graph = helper.make_graph(
        [proto], "g",
        [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for k, a in enumerate(inputs)],
        [helper.make_tensor_value_info("o", onnx.TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {f"i{k}": a for k, a in enumerate(inputs)})[0]


def _ir_node(proto):
    model = helper.make_model(helper.make_graph([proto], "g", [], []))
    return ir.serde.deserialize_model(model).graph.node(0)


CASES = [
    ("Unsqueeze", [np.array([3, 4], I64), np.array([0], I64)], 13, {}),
    ("Unsqueeze", [np.array(7, I64), np.array([0], I64)], 13, {}),
    ("Unsqueeze", [np.arange(6, dtype=I64).reshape(2, 3), np.array([-1, 0], I64)], 18, {}),
    ("Unsqueeze", [np.arange(6, dtype=np.int32).reshape(2, 3), np.array([1, 3], I64)], 13, {}),
    ("Unsqueeze", [np.array([5, 6], I64)], 11, {"axes": [0, -1]}),
    ("Cast", [np.array(5, I64)], 13, {"to": onnx.TensorProto.INT64}),
    ("Cast", [np.array([-3, 300, 70000], I64)], 13, {"to": onnx.TensorProto.INT32}),
    ("Cast", [np.array([-3, 300], I64)], 13, {"to": onnx.TensorProto.UINT8}),
    ("Cast", [np.array([2, 9], np.int32)], 13, {"to": onnx.TensorProto.INT64}),
    ("Mul", [np.array([2, 3, 4, 5, 6], I64), np.array(8, I64)], 13, {}),
    ("Mul", [np.array(-7, I64), np.array(3, I64)], 13, {}),
    ("Add", [np.array([[1], [2]], I64), np.array([10, 20, 30], I64)], 14, {}),
    ("Sub", [np.array([1, -2], np.int32), np.array(5, np.int32)], 14, {}),
    ("Div", [np.array(64, I64), np.array(8, I64)], 14, {}),
    ("Div", [np.array([7, -7, 7, -7, 0], I64), np.array([2, 2, -2, -2, 3], I64)], 14, {}),
    ("Div", [np.array([9, 10, 11], np.int32), np.array(4, np.int32)], 14, {}),
    ("ConstantOfShape", [np.array([5], I64)], 13, {"value": helper.make_tensor("v", onnx.TensorProto.INT64, [1], [1])}),
    ("ConstantOfShape", [np.array([2, 3], I64)], 13, {"value": helper.make_tensor("v", onnx.TensorProto.INT32, [1], [-4])}),
    ("ConstantOfShape", [np.array([0, 3], I64)], 13, {"value": helper.make_tensor("v", onnx.TensorProto.INT64, [1], [2])}),
    ("ConstantOfShape", [np.array([3], I64)], 13, {}),
]


@pytest.mark.parametrize("op,inputs,opset,attrs", CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_equals_the_reference_evaluator(op, inputs, opset, attrs):
    proto = helper.make_node(op, [f"i{k}" for k in range(len(inputs))], ["o"], **attrs)
    got = shape_math.evaluate(_ir_node(proto), inputs, opset)
    assert got is not None, "a form shape_math takes"
    want = _reference(proto, inputs, opset)
    assert got[0].dtype == want.dtype and got[0].shape == want.shape
    np.testing.assert_array_equal(got[0], want)


LEFT_TO_THE_EVALUATOR = [
    ("Div", [np.array([5], I64), np.array([0], I64)], 14, {}),  # division by zero
    ("Div", [np.array([2 ** 60], I64), np.array([3], I64)], 14, {}),  # not exact in float64
    ("Mul", [np.array([2.0], np.float32), np.array([3.0], np.float32)], 14, {}),  # floats
    ("Mul", [np.array([2], np.int32), np.array([3], I64)], 14, {}),  # mixed types
    ("Cast", [np.array([1, 0], I64)], 13, {"to": onnx.TensorProto.BOOL}),
    ("Cast", [np.array([1], I64)], 13, {"to": onnx.TensorProto.FLOAT}),
    ("Unsqueeze", [np.array([1, 2], I64), np.array([0, 0], I64)], 13, {}),  # repeated axis
    ("Unsqueeze", [np.array([1, 2], I64), np.array([5], I64)], 13, {}),  # out of range
    ("ConstantOfShape", [np.array([-1], I64)], 13, {}),
    ("ConstantOfShape", [np.array([1 << 11, 1 << 11], I64)], 13, {}),  # larger than is folded
    ("Concat", [np.array([1], I64), np.array([2], I64)], 13, {"axis": 0}),  # not an op here
]


@pytest.mark.parametrize("op,inputs,opset,attrs", LEFT_TO_THE_EVALUATOR,
                         ids=[f"{c[0]}-{k}" for k, c in enumerate(LEFT_TO_THE_EVALUATOR)])
def test_other_forms_are_left_to_the_evaluator(op, inputs, opset, attrs):
    proto = helper.make_node(op, [f"i{k}" for k in range(len(inputs))], ["o"], **attrs)
    assert shape_math.evaluate(_ir_node(proto), inputs, opset) is None


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_division_at_the_smallest_value_of_the_type(dtype):
    """|min| does not fit the type: the quotient came out with the wrong sign (int8 -128 / 3
    gave 43, not -42), and gp.load folded a wrong shape constant (adversarial probe)."""
    low = np.iinfo(dtype).min
    a, b = np.array([low, low, 7, low, -9], dtype), np.array([3, -5, low, 1, 2], dtype)
    proto = helper.make_node("Div", ["i0", "i1"], ["o"])
    got = shape_math.evaluate(_ir_node(proto), [a, b], 14)
    np.testing.assert_array_equal(got[0], _reference(proto, [a, b], 14))
    # the one quotient that does not fit the type is left to the evaluator
    assert shape_math.evaluate(_ir_node(proto), [np.array([low], dtype), np.array([-1], dtype)], 14) is None


def test_operands_that_do_not_broadcast_are_left_to_the_evaluator():
    proto = helper.make_node("Add", ["i0", "i1"], ["o"])
    assert shape_math.evaluate(_ir_node(proto), [np.zeros((2, 2), I64), np.zeros(3, I64)], 14) is None


@pytest.mark.parametrize("axes", [[2, 0], [-1, 0], [1, -4]])
def test_unsqueeze_before_opset_13_with_unsorted_axes_equals_onnx_runtime(axes):
    """Axes count in the output's rank and insert together, as the spec and ONNX Runtime do
    (the reference evaluator inserts them one by one in the given order: a wrong shape)."""
    from graphprune.runtime import ort

    data = np.arange(6, dtype=I64).reshape(2, 3)
    proto = helper.make_node("Unsqueeze", ["x"], ["o"], axes=axes)
    graph = helper.make_graph([proto], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, [2, 3])],
                              [helper.make_tensor_value_info("o", onnx.TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    want = ort.session(model.SerializeToString()).run(None, {"x": data})[0]
    got = shape_math.evaluate(_ir_node(proto), [data], 11)
    assert got[0].shape == want.shape
    np.testing.assert_array_equal(got[0], want)
