"""The one recogniser of a written-out RMSNorm (graphprune/ir/rms_norm.py): which forms are
an RMSNorm after the mean of x², what it reports of each, and what is not one."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from helpers import make_model
from onnx import TensorProto, helper

from graphprune.ir.rms_norm import rms_norm_after

D = 8


def _norm(divide: str, after=(), gamma: str = "const", eps=1e-5):
    """x -> mean(x²) -> + eps -> sqrt -> x / that (`divide`) -> `after` ops -> * gamma."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["mean"], keepdims=1),
             helper.make_node("Add", ["mean", "eps"], ["var"]), helper.make_node("Sqrt", ["var"], ["root"])]
    inits = {"axes": np.array([-1], np.int64), "eps": np.asarray(eps, np.float32), "one": np.float32(1.0),
             "two": np.float32(2.0), "g": np.linspace(0.5, 1.5, D).astype(np.float32)}
    nodes += {
        "div": [helper.make_node("Div", ["x", "root"], ["n0"])],
        "reciprocal": [helper.make_node("Reciprocal", ["root"], ["inv"]), helper.make_node("Mul", ["inv", "x"], ["n0"])],
        "one_over": [helper.make_node("Div", ["one", "root"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["n0"])],
        "two_over": [helper.make_node("Div", ["two", "root"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["n0"])],
        "root_over_x": [helper.make_node("Div", ["root", "x"], ["n0"])],
    }[divide]
    last = "n0"
    for k, to in enumerate(after):
        nodes.append(helper.make_node("Cast", [last], [f"c{k}"], to=to))
        last = f"c{k}"
    if gamma == "const":
        nodes.append(helper.make_node("Mul", [last, "g"], ["y"]))
    elif gamma == "input":
        nodes.append(helper.make_node("Mul", [last, "gin"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    inputs = [("x", [2, D])] + ([("gin", [D])] if gamma == "input" else [])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT16 if TensorProto.FLOAT16 in after[-1:] else
                                        TensorProto.FLOAT, None)
    model = ir.serde.deserialize_model(make_model(nodes, inputs, [out], inits, check=False))
    values = {v.name: v for n in model.graph for v in n.outputs}
    return model, values


@pytest.mark.parametrize("divide", ["div", "reciprocal", "one_over"])
def test_the_three_ways_to_divide_by_the_root(divide):
    model, v = _norm(divide)
    tail = rms_norm_after(v["mean"])
    assert tail is not None
    assert tail.scaled.name == "x" and tail.normed is v["n0"] and tail.scale is v["n0"].producer()
    assert tail.eps_add is v["var"].producer() and tail.eps_add.inputs[tail.eps_input].name == "eps"
    assert tail.gamma_mul is v["y"].producer() and tail.gamma_mul.inputs[tail.gamma_input].name == "g"


def test_casts_that_keep_values_are_walked_through_and_one_that_rounds_ends_the_norm():
    _, v = _norm("div", after=(TensorProto.FLOAT, TensorProto.FLOAT))
    tail = rms_norm_after(v["mean"])
    assert tail.normed is v["c1"] and tail.gamma_mul is not None
    _, v = _norm("div", after=(TensorProto.FLOAT16,))
    tail = rms_norm_after(v["mean"])
    assert tail.normed is v["n0"] and tail.gamma_mul is None  # the Cast to float16 is not walked


def test_a_weight_that_is_not_a_constant_vector_is_no_weight():
    _, v = _norm("div", gamma="input")
    tail = rms_norm_after(v["mean"])
    assert tail is not None and tail.gamma_mul is None and tail.gamma_input is None
    _, v = _norm("div", gamma="none")
    assert rms_norm_after(v["mean"]).gamma_mul is None


@pytest.mark.parametrize("divide", ["two_over", "root_over_x"])
def test_other_divisions_are_not_a_norm(divide):
    _, v = _norm(divide)
    assert rms_norm_after(v["mean"]) is None


def test_eps_must_be_one_number_and_the_mean_read_once():
    _, v = _norm("div", eps=np.full(D, 1e-5, np.float32))
    assert rms_norm_after(v["mean"]) is None
    model, v = _norm("div")
    extra = ir.node("Identity", [v["mean"]])
    model.graph.append(extra)
    assert rms_norm_after(v["mean"]) is None  # the mean is read elsewhere too
