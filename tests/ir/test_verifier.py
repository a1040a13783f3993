"""The IR verifier: one hand-built graph per violation, all violations of a graph reported,
valid (and pruned) models clean."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import graphprune as gp
from graphprune.errors import VerificationError
from graphprune.ir.verifier import MAX_LISTED, find_violations, verify_model

F = ir.DataType.FLOAT


def val(name: str, *shape) -> ir.Value:
    return ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(F))


def const(name: str, *shape) -> ir.Value:
    arr = np.ones(shape, np.float32)
    return ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(F), const_value=ir.tensor(arr, name=name))


def op(op_type: str, inputs, out: ir.Value | tuple, name: str, **attrs) -> ir.Node:
    """A node whose output is `out` (a Value to take the name/shape from, or (name, *shape))."""
    node = ir.node(op_type, list(inputs), attributes=attrs or None, name=name)
    o = node.outputs[0]
    if isinstance(out, tuple):
        out = val(*out)
    o.name, o.shape, o.type = out.name, out.shape, out.type
    return node


def model(inputs, outputs, nodes, inits=()) -> ir.Model:
    g = ir.Graph(inputs, outputs, nodes=nodes, initializers=list(inits), opset_imports={"": 18}, name="t")
    return ir.Model(g, ir_version=9)


def conv_block(c_in=4, c_out=8, c_w=None, bias=None, group=1, y_channels=None):
    """x -> Conv(w, b) -> BatchNormalization -> y, every shape given; the default is valid."""
    x = val("x", 1, c_in, 8, 8)
    w = const("w", c_out, c_in // group if c_w is None else c_w, 3, 3)
    b = const("b", c_out if bias is None else bias)
    bn = [const(f"bn_{k}", c_out) for k in ("scale", "bias", "mean", "var")]
    conv = op("Conv", [x, w, b], ("c", 1, c_out if y_channels is None else y_channels, 8, 8), "conv",
              pads=[1, 1, 1, 1], group=group)
    norm = op("BatchNormalization", [conv.outputs[0], *bn], ("y", 1, c_out, 8, 8), "bn")
    return model([x], [norm.outputs[0]], [conv, norm], [w, b, *bn])


def kinds(m: ir.Model) -> list[str]:
    return [v.kind for v in find_violations(m)]


def only(m: ir.Model):
    found = find_violations(m)
    assert len(found) == 1, [str(v) for v in found]
    return found[0]


# -- valid graphs ------------------------------------------------------------------------


def test_valid_graph_verifies_clean_including_onnx_checker():
    m = conv_block()
    assert find_violations(m) == []
    verify_model(m, onnx_check=True, full_check=True)


def test_unknown_and_symbolic_dims_are_not_compared():
    m = conv_block()
    m.graph.inputs[0].shape = ir.Shape(["N", "C", None, None])
    m.graph.node("conv").outputs[0].shape = None
    assert find_violations(m) == []


def test_pruned_model_verifies_clean(samples_dir):
    m = gp.load(samples_dir / "tiny_resnet.onnx")
    n_params = sum(v.const_value.size for v in m.graph.initializers.values())
    res = gp.prune(m, 0.5)
    assert res.changed
    assert sum(v.const_value.size for v in res.model.graph.initializers.values()) < n_params
    assert find_violations(res.model) == []
    verify_model(res.model, onnx_check=True)


# -- one test per violation --------------------------------------------------------------


def test_dangling_input():
    x = val("x", 1, 4)
    a = op("Relu", [x], ("a", 1, 4), "relu_a")
    b = op("Relu", [a.outputs[0]], ("b", 1, 4), "relu_b")
    m = model([x], [b.outputs[0]], [a, b])
    m.graph.remove(a, safe=False)  # what a pass that forgot to rewire its consumers leaves
    v = only(m)
    assert (v.kind, v.node, v.value) == ("dangling-input", "relu_b", "a")
    assert "'relu_b' (Relu)" in str(v)


def test_value_produced_twice():
    x = val("x", 1, 4)
    a = op("Relu", [x], ("t", 1, 4), "relu_a")
    b = op("Neg", [a.outputs[0]], ("t", 1, 4), "neg_b")
    m = model([x], [b.outputs[0]], [a, b])
    v = only(m)
    assert (v.kind, v.node, v.value) == ("duplicate-value", "neg_b", "t")
    assert "'relu_a' (Relu)" in str(v)


def test_node_output_named_like_an_initializer():
    x, w = val("x", 1, 4), const("w", 1, 4)
    a = op("Add", [x, w], ("w", 1, 4), "add")
    v = only(model([x], [a.outputs[0]], [a], [w]))
    assert (v.kind, v.node) == ("duplicate-value", "add") and "initializer" in str(v)


def test_use_before_def():
    x = val("x", 1, 4)
    a = op("Relu", [x], ("a", 1, 4), "relu_a")
    b = op("Neg", [a.outputs[0]], ("b", 1, 4), "neg_b")
    v = only(model([x], [b.outputs[0]], [b, a]))
    assert (v.kind, v.node, v.value) == ("use-before-def", "neg_b", "a")
    assert "relu_a" in str(v) and "topological" in str(v)


def test_graph_output_not_produced():
    x = val("x", 1, 4)
    a = op("Relu", [x], ("a", 1, 4), "relu_a")
    v = only(model([x], [a.outputs[0], val("ghost", 1, 4)], [a]))
    assert (v.kind, v.value) == ("output-not-produced", "ghost")


def test_duplicate_node_names():
    x = val("x", 1, 4)
    a = op("Relu", [x], ("a", 1, 4), "same")
    b = op("Neg", [a.outputs[0]], ("b", 1, 4), "same")
    v = only(model([x], [b.outputs[0]], [a, b]))
    assert (v.kind, v.node) == ("duplicate-node-name", "same")


def test_unnamed_nodes_are_not_duplicates():
    x = val("x", 1, 4)
    a = op("Relu", [x], ("a", 1, 4), "")
    b = op("Neg", [a.outputs[0]], ("b", 1, 4), "")
    assert kinds(model([x], [b.outputs[0]], [a, b])) == []


def test_initializer_data_disagrees_with_recorded_shape():
    m = conv_block()
    b = m.graph.initializers["b"]
    b.const_value = ir.tensor(np.ones(6, np.float32), name="b")  # data cut, value shape not updated
    v = only(m)
    assert (v.kind, v.value) == ("const-mismatch", "b")
    assert "[6]" in str(v) and "[8]" in str(v)


def test_initializer_data_disagrees_with_recorded_dtype():
    m = conv_block()
    m.graph.initializers["b"].const_value = ir.tensor(np.ones(8, np.float64), name="b")
    v = only(m)
    assert (v.kind, v.value) == ("const-mismatch", "b") and "DOUBLE" in str(v)


def test_constant_node_data_disagrees_with_recorded_shape():
    x = val("x", 1, 4)
    c = op("Constant", [], ("k", 4), "k_const", value=ir.tensor(np.ones(3, np.float32)))
    a = op("Add", [x, c.outputs[0]], ("a", 1, 4), "add")
    v = only(model([x], [a.outputs[0]], [c, a]))
    assert (v.kind, v.node, v.value) == ("const-mismatch", "k_const", "k")


def test_conv_weight_disagrees_with_input_channels():
    v = only(conv_block(c_in=4, c_w=3))
    assert (v.kind, v.node) == ("channel-mismatch", "conv")
    assert "4 channels" in str(v) and "3 x group 1" in str(v)


def test_grouped_conv_weight_disagrees_with_input_channels():
    v = only(conv_block(c_in=8, c_out=8, group=4, c_w=4))  # 4 x 4 = 16 != 8
    assert (v.kind, v.node) == ("channel-mismatch", "conv") and "group 4 = 16" in str(v)


def test_group_does_not_divide_output_channels():
    v = only(conv_block(c_in=6, c_out=8, group=3))  # input 6 = 2 x 3, but 3 does not divide 8
    assert (v.kind, v.node) == ("bad-group", "conv") and "8 output channels" in str(v)


def test_group_not_positive():
    assert kinds(conv_block(group=1)) == []
    m = conv_block()
    m.graph.node("conv").attributes["group"] = ir.AttrInt64("group", 0)
    v = only(m)
    assert v.kind == "bad-group" and "not positive" in str(v)


def test_conv_bias_disagrees_with_output_channels():
    v = only(conv_block(bias=7))
    assert (v.kind, v.node) == ("channel-mismatch", "conv") and "7 entries for 8" in str(v)


def test_conv_output_records_stale_channels():
    m = conv_block(y_channels=8)
    assert kinds(m) == []
    found = find_violations(conv_block(y_channels=16))  # the BN after it then disagrees too
    assert (found[0].kind, found[0].node, found[0].value) == ("stale-shape", "conv", "c")
    assert {v.kind for v in found[1:]} == {"channel-mismatch"} and {v.node for v in found[1:]} == {"bn"}


def test_batchnorm_statistics_disagree_with_channels():
    m = conv_block()
    m.graph.initializers["bn_mean"].const_value = ir.tensor(np.zeros(6, np.float32), name="bn_mean")
    m.graph.initializers["bn_mean"].shape = ir.Shape([6])
    v = only(m)
    assert (v.kind, v.node) == ("channel-mismatch", "bn") and "mean 'bn_mean' has 6 entries" in str(v)


def test_conv_transpose_weight_and_bias():
    x, w, b = val("x", 1, 4, 8, 8), const("w", 4, 3, 2, 2), const("b", 6)
    ct = op("ConvTranspose", [x, w, b], ("y", 1, 6, 16, 16), "up", strides=[2, 2], group=2)
    assert kinds(model([x], [ct.outputs[0]], [ct], [w, b])) == []  # M = 3 x group 2 = 6

    x, w, b = val("x", 1, 5, 8, 8), const("w", 4, 3, 2, 2), const("b", 5)
    ct = op("ConvTranspose", [x, w, b], ("y", 1, 6, 16, 16), "up", strides=[2, 2], group=2)
    found = find_violations(model([x], [ct.outputs[0]], [ct], [w, b]))
    assert [v.kind for v in found] == ["channel-mismatch", "bad-group", "channel-mismatch"]
    assert "5 channels, weight 'w' expects 4" in str(found[0]) and "5 entries for 6" in str(found[2])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_inner_dims_disagree(trans_b):
    x = val("x", 2, 8)
    w = const("w", *((6, 7) if trans_b else (7, 6)))
    g = op("Gemm", [x, w], ("y", 2, 6), "fc", transB=trans_b)
    v = only(model([x], [g.outputs[0]], [g], [w]))
    assert (v.kind, v.node) == ("channel-mismatch", "fc") and "8 columns" in str(v) and "7 rows" in str(v)


def test_gemm_bias_disagrees_with_outputs():
    x, w, c = val("x", 2, 8), const("w", 6, 8), const("c", 5)
    g = op("Gemm", [x, w, c], ("y", 2, 6), "fc", transB=1)
    v = only(model([x], [g.outputs[0]], [g], [w, c]))
    assert (v.kind, v.node) == ("channel-mismatch", "fc") and "5 columns for 6" in str(v)


def test_matmul_inner_dims_disagree():
    x, w = val("x", 2, 3, 8), const("w", 7, 4)
    mm = op("MatMul", [x, w], ("y", 2, 3, 4), "mm")
    v = only(model([x], [mm.outputs[0]], [mm], [w]))
    assert (v.kind, v.node) == ("channel-mismatch", "mm") and "8" in str(v) and "7" in str(v)


def test_matmul_with_vector_and_stale_output():
    x, w = val("x", 2, 8), const("w", 8)
    mm = op("MatMul", [x, w], ("y", 2), "mv")
    assert kinds(model([x], [mm.outputs[0]], [mm], [w])) == []
    x, w = val("x", 2, 8), const("w", 8, 4)
    mm = op("MatMul", [x, w], ("y", 2, 5), "mm")
    v = only(model([x], [mm.outputs[0]], [mm], [w]))
    assert (v.kind, v.value) == ("stale-shape", "y")


# -- subgraphs ---------------------------------------------------------------------------


def _if_model(x, then_nodes, then_out, else_nodes, else_out, outer_extra=()):
    cond = ir.Value(name="cond", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.BOOL))
    then = ir.Graph([], [then_out], nodes=then_nodes, name="then")
    els = ir.Graph([], [else_out], nodes=else_nodes, name="else")
    node = op("If", [cond], ("z", 1, 4), "if", then_branch=then, else_branch=els)
    return model([x, cond], [node.outputs[0]], [*outer_extra, node])


def test_subgraph_sees_outer_values_and_siblings_may_share_names():
    x = val("x", 1, 4)
    t = op("Relu", [x], ("t", 1, 4), "then_relu")
    e = op("Neg", [x], ("t", 1, 4), "else_neg")
    m = _if_model(x, [t], t.outputs[0], [e], e.outputs[0])
    assert kinds(m) == []
    verify_model(m, onnx_check=True)


def test_subgraph_dangling_input_and_shadowed_name():
    x, stray = val("x", 1, 4), val("stray", 1, 4)  # stray: produced nowhere
    t = op("Relu", [stray], ("t", 1, 4), "then_relu")
    pre = op("Identity", [x], ("e", 1, 4), "outer_e")  # outer value named like the else output
    e = op("Neg", [x], ("e", 1, 4), "else_neg")
    m = _if_model(x, [t], t.outputs[0], [e], e.outputs[0], outer_extra=[pre])
    found = find_violations(m)
    got = {(v.kind, v.node) for v in found}
    assert got == {("dangling-input", "then_relu"), ("duplicate-value", "else_neg")}


# -- all violations, reported together ---------------------------------------------------


def test_several_violations_are_all_reported():
    m = conv_block(c_in=4, c_w=3, bias=7)  # weight and bias both disagree with the conv
    m.graph.node("bn").name = "conv"  # two nodes named conv
    m.graph.outputs.append(val("ghost", 1))  # an output produced by nothing
    found = find_violations(m)
    assert [v.kind for v in found] == ["channel-mismatch", "channel-mismatch", "duplicate-node-name",
                                       "output-not-produced"]
    with pytest.raises(VerificationError) as info:
        verify_model(m, where="after test")
    err = info.value
    assert err.violations == found and err.node == "conv"
    msg = str(err)
    assert msg.startswith("after test: 4 IR violations:")
    assert all(str(v) in msg for v in found)


def test_long_lists_are_cut_in_the_message_but_kept_on_the_error():
    x = val("x", 1, 4)
    nodes = [op("Relu", [val(f"gone{i}", 1, 4)], (f"a{i}", 1, 4), f"r{i}") for i in range(MAX_LISTED + 3)]
    m = model([x], [n.outputs[0] for n in nodes], nodes)
    with pytest.raises(VerificationError) as info:
        verify_model(m)
    assert len(info.value.violations) == MAX_LISTED + 3
    assert "... and 3 more" in str(info.value)
    assert "'r0'" in str(info.value) and f"'r{MAX_LISTED + 2}'" not in str(info.value)


def test_onnx_checker_at_the_boundary_catches_what_the_ir_verifier_cannot():
    x = val("x", 1, 4)
    a = op("NoSuchOp", [x], ("a", 1, 4), "bogus")
    m = model([x], [a.outputs[0]], [a])
    assert find_violations(m) == []
    verify_model(m)
    with pytest.raises(VerificationError, match="onnx.checker"):
        verify_model(m, onnx_check=True)
