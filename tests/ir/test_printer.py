"""The printer: one line a node, constants marked, attributes and subgraphs shown."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

import graphprune as gp
from graphprune.ir.printer import format_graph, format_node

F = ir.DataType.FLOAT


def val(name, shape):
    return ir.Value(name=name, shape=None if shape is None else ir.Shape(shape), type=ir.TensorType(F))


def node(op_type, inputs, out_name, out_shape, name, **attrs):
    n = ir.node(op_type, inputs, attributes=attrs or None, name=name)
    n.outputs[0].name, n.outputs[0].shape = out_name, None if out_shape is None else ir.Shape(out_shape)
    return n


def grouped_conv_model():
    x = val("x", ["N", 4, 8, None])
    w = ir.Value(name="w", shape=ir.Shape([8, 2, 1, 1]), type=ir.TensorType(F),
                 const_value=ir.tensor(np.ones((8, 2, 1, 1), np.float32), name="w"))
    conv = node("Conv", [x, w, None], "y", ["N", 8, 8, None], "conv1", group=2, kernel_shape=[1, 1])
    k = node("Constant", [], "k", [], "k_const", value=ir.tensor(np.float32(0.5)))
    mul = node("Mul", [conv.outputs[0], k.outputs[0]], "z", None, "")
    g = ir.Graph([x], [mul.outputs[0]], nodes=[conv, k, mul], initializers=[w], opset_imports={"": 18}, name="g")
    return ir.Model(g, ir_version=9)


def test_format_graph_exact_text():
    assert format_graph(grouped_conv_model()).splitlines() == [
        "graph g",
        "  inputs:  %x[Nx4x8x?]",
        "  outputs: %z[?]",
        "  %y[Nx8x8x?] = Conv(%x[Nx4x8x?], #w[8x2x1x1], _) {group=2, kernel_shape=[1,1]}  # conv1",
        "  %z[?] = Mul(%y[Nx8x8x?], #k[])",  # unnamed node: no comment; Constant node not listed
    ]


def test_format_node_attribute_kinds():
    x = val("x", [2, 3])
    n = node("Custom", [x], "y", [2, 3], "c", f=0.25, s="mode", ints=list(range(12)), floats=[0.5, 1.0],
             t=ir.tensor(np.zeros((2, 3), np.float32)))
    n.domain = "my.domain"
    line = format_node(n)
    assert line.startswith("%y[2x3] = my.domain::Custom(%x[2x3]) {")
    assert "f=0.25" in line and "s=mode" in line and "floats=[0.5,1]" in line
    assert "ints=[0,1,2,3,4,5,6,7,...]" in line  # long lists are cut
    assert "t=tensor[2x3]" in line and line.endswith("}  # c")


def test_max_nodes_counts_listed_nodes_only():
    text = format_graph(grouped_conv_model(), max_nodes=1)
    assert text.splitlines()[-2].startswith("  %y[")
    assert text.splitlines()[-1] == "  ... 1 more nodes"  # the Constant is neither listed nor counted


def test_subgraphs_are_printed_indented_under_their_node():
    x = val("x", [1, 4])
    cond = ir.Value(name="cond", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.BOOL))
    t = node("Relu", [x], "t", [1, 4], "then_relu")
    e = node("Neg", [x], "e", [1, 4], "else_neg")
    then = ir.Graph([], [t.outputs[0]], nodes=[t], name="then")
    els = ir.Graph([], [e.outputs[0]], nodes=[e], name="else")
    n = node("If", [cond], "z", [1, 4], "if", then_branch=then, else_branch=els)
    m = ir.Model(ir.Graph([x, cond], [n.outputs[0]], nodes=[n], opset_imports={"": 18}), ir_version=9)
    lines = format_graph(m).splitlines()
    i = lines.index("  %z[1x4] = If(%cond[]) {then_branch=<graph then>, else_branch=<graph else>}  # if")
    assert lines[i + 1:] == [
        "    then_branch: graph then",
        "      inputs:  ",
        "      outputs: %t[1x4]",
        "      %t[1x4] = Relu(%x[1x4])  # then_relu",
        "    else_branch: graph else",
        "      inputs:  ",
        "      outputs: %e[1x4]",
        "      %e[1x4] = Neg(%x[1x4])  # else_neg",
    ]


def test_real_model_one_line_per_non_constant_node(samples_dir):
    m = gp.load(samples_dir / "tiny_mobilenet.onnx")
    lines = format_graph(m).splitlines()
    listed = [n for n in m.graph if n.op_type != "Constant"]
    assert len(lines) == 3 + len(listed)
    assert any("group=" in ln and ln.strip().startswith("%") and "Conv(" in ln for ln in lines)
