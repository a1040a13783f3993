"""ir.layers, the one table of weighted ops: MACs per op at a shape against hand-computed
numbers, channel axes per attribute, and a made-up op registered there alone is picked up
by model cost, the allocation's MAC terms, sparsity targets and the per-layer report."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

import graphprune as gp
from graphprune.allocation.cost import mac_terms
from graphprune.analysis.cost import model_cost, node_macs
from graphprune.importance.layers import linear_of
from graphprune.ir import layers as L
from graphprune.passes.sparsity.targets import find_targets
from graphprune.report.layers import compare_layers, layer_table
from helpers import make_model, w


# ---- MAC formulas at a shape, by hand ---------------------------------------------------
def test_conv_grouped_macs():
    # x [2, 8, 10, 10], w [12, 8/4, 3, 3], group 4, y [2, 12, 8, 8]:
    # every output element sums 2 input channels × 9 taps
    op = L.weighted_op(ir.Node("", "Conv", []))
    assert op.macs({"group": 4}, [2, 8, 10, 10], [12, 2, 3, 3], [2, 12, 8, 8]) == 2 * 12 * 8 * 8 * (2 * 3 * 3)
    assert op.macs({"group": 4}, [2, 8, 10, 10], [12, 2, 3, 3], None) == 0  # output shape unknown


def test_conv_transpose_macs():
    # x [1, 6, 5, 5], w [6, 4/2, 3, 3], group 2: every input element scatters into 2 output
    # channels × 9 taps, whatever the output size
    op = L.weighted_op(ir.Node("", "ConvTranspose", []))
    assert op.macs({"group": 2}, [1, 6, 5, 5], [6, 2, 3, 3], [1, 4, 11, 11]) == 6 * 5 * 5 * 2 * 9
    assert op.macs({"group": 2}, [1, 6, 5, 5], [6, 2, 3, 3], None) == 6 * 5 * 5 * 2 * 9


def test_gemm_macs_and_axes():
    op = L.weighted_op(ir.Node("", "Gemm", []))
    # A [32, 64] · Bᵀ with B [16, 64]: 32 × 16 outputs of 64 products each
    assert op.macs({"transB": 1}, [32, 64], [16, 64], [32, 16]) == 32 * 16 * 64
    # transA: A is [K, M] = [64, 32]
    assert op.macs({"transA": 1}, [64, 32], [64, 16], [32, 16]) == 32 * 16 * 64
    assert op.axes({"transB": 1}) == L.Axes(x=1, w_in=1, w_out=0, y=1)
    assert op.axes({}) == L.Axes(x=1, w_in=0, w_out=1, y=1)
    assert op.axes({"transA": 1}).x == 0
    assert op.matrix_problem({"transA": 1}, 2) and op.matrix_problem({}, 2) is None


def test_matmul_batched_macs_and_axes():
    op = L.weighted_op(ir.Node("", "MatMul", []))
    # [3, 5, 7, 8] @ [8, 6]: 3·5·7·6 outputs of 8 products; symbolic batch counts as 1
    assert op.macs({}, [3, 5, 7, 8], [8, 6], [3, 5, 7, 6]) == 3 * 5 * 7 * 6 * 8
    assert op.macs({}, ["batch", 7, 8], [8, 6], ["batch", 7, 6]) == 7 * 6 * 8
    # batched weight [3, 8, 6]
    assert op.macs({}, [3, 7, 8], [3, 8, 6], [3, 7, 6]) == 3 * 7 * 6 * 8
    assert op.axes({}, 4, 2, 4) == L.Axes(x=3, w_in=0, w_out=1, y=3)
    assert op.axes({}, 3, 3, 3) == L.Axes(x=2, w_in=1, w_out=2, y=2)
    assert op.matrix_problem({}, 3) and op.bias is None


def test_conv_axes_and_group_sizes():
    conv = L.weighted_op(ir.Node("", "Conv", [])).axes({"group": 4})
    assert (conv.x, conv.w_in, conv.w_out, conv.y, conv.group) == (1, 1, 0, 1, 4)
    assert conv.in_per_group_size([12, 2, 3, 3]) == 2 and conv.out_per_group_size([12, 2, 3, 3]) == 3
    assert conv.depthwise([8, 1, 3, 3]) and not conv.depthwise([12, 2, 3, 3])
    ct = L.weighted_op(ir.Node("", "ConvTranspose", [])).axes({"group": 2})
    assert (ct.x, ct.w_in, ct.w_out, ct.y) == (1, 0, 1, 1)
    assert ct.in_per_group_size([6, 2, 3, 3]) == 3 and ct.out_per_group_size([6, 2, 3, 3]) == 2
    assert not ct.depthwise([2, 1, 3, 3])


def test_registry():
    assert {(o.domain, o.op_type) for o in L.registered()} >= {("", "Conv"), ("", "ConvTranspose"), ("", "Gemm"),
                                                               ("", "MatMul")}
    assert L.weighted_op(ir.Node("ai.onnx", "Conv", [])) is L.weighted_op(ir.Node("", "Conv", []))
    assert L.weighted_op(ir.Node("", "Relu", [])) is None
    assert L.weighted_op(ir.Node("com.other", "Conv", [])) is None
    L.register(L.ConvOp("Conv"))  # the same entry again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        L.register(L.GemmOp("Conv"))


# ---- a made-up weighted op, registered in ir/layers alone -------------------------------
DOMAIN = "com.graphprune.test"


@pytest.fixture
def my_conv():
    op = L.register(L.ConvOp("MyConv", domain=DOMAIN))
    yield op
    L.unregister("MyConv", DOMAIN)


def _model(op_type: str, domain: str = ""):
    """x [1, 8, 10, 10] → 3×3 conv (16, pad 1) → Relu → 3×3 conv (16, pad 1) → y; both convs
    are `op_type` in `domain`; shapes are recorded on every value (a custom op gets no shape
    inference)."""
    nodes = [helper.make_node(op_type, ["x", "w1", "b1"], ["h"], name="c1", domain=domain, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node(op_type, ["r", "w2"], ["y"], name="c2", domain=domain, pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", [1, 8, 10, 10])], [("y", [1, 16, 10, 10])],
                       {"w1": w(16, 8, 3, 3, seed=1), "b1": w(16, seed=2), "w2": w(16, 16, 3, 3, seed=3)}, check=False)
    proto.graph.value_info.extend([helper.make_tensor_value_info(n, 1, [1, 16, 10, 10]) for n in ("h", "r")])
    if domain:
        proto.opset_import.append(helper.make_opsetid(domain, 1))
    model = ir.serde.deserialize_model(proto)
    return model


def _figures(model: ir.Model) -> dict:
    cost = model_cost(model)
    shapes = {"x": (1, 8, 10, 10), "h": (1, 16, 10, 10), "r": (1, 16, 10, 10), "y": (1, 16, 10, 10)}
    targets, _ = find_targets(model, skip_first=False, skip_last=False, min_params=0)
    return {"macs": cost.macs, "params": cost.params,
            "terms": [(n.name, m, [(s.value, s.axis) for s in sl]) for n, m, sl in mac_terms(model, shapes)],
            "targets": [(t.name, t.op, t.out_axis, t.in_axis, t.ig, t.taps, t.kernel) for t in targets],
            "rows": {k: (v["width"], v["macs"]) for k, v in layer_table(model).items()}}


def test_made_up_op_is_unknown_until_registered():
    model = _model("MyConv", DOMAIN)
    assert all(node_macs(n) == 0 for n in model.graph)
    assert layer_table(model) == {}
    assert find_targets(model, skip_first=False, skip_last=False, min_params=0)[0] == []


def test_made_up_op_is_picked_up_like_conv(my_conv):
    mine, ref = _figures(_model("MyConv", DOMAIN)), _figures(_model("Conv"))
    macs1, macs2 = 16 * 10 * 10 * 8 * 9, 16 * 10 * 10 * 16 * 9  # by hand
    assert mine["macs"] == ref["macs"] == macs1 + macs2
    assert mine["params"] == ref["params"] == 16 * 8 * 9 + 16 + 16 * 16 * 9
    assert mine["terms"] == ref["terms"] == [("c1", float(macs1), [("h", 1), ("w1", 1)]),
                                             ("c2", float(macs2), [("y", 1), ("w2", 1)])]
    # the sparsify pass would touch both weights, with a conv's layout
    assert mine["targets"] == ref["targets"] == [("w1", "Conv", 0, 1, 8, 9, (3, 3)), ("w2", "Conv", 0, 1, 16, 9, (3, 3))]
    assert mine["rows"] == ref["rows"] == {"c1": (16, macs1), "c2": (16, macs2)}
    lin = linear_of(next(n for n in _model("MyConv", DOMAIN).graph if n.name == "c1"))
    assert (lin.kind, lin.op, lin.b.name, lin.group) == ("conv", my_conv, "b1", 1)


def test_made_up_op_report_rows_before_after(my_conv):
    before = _model("MyConv", DOMAIN)
    after = _model("MyConv", DOMAIN)
    # as if 4 of c1's output channels were pruned: narrower weights and activations
    for v in after.graph.initializers.values():
        if v.name in ("w1", "b1"):
            v.const_value = ir.tensor(np.asarray(v.const_value.numpy()[:12]))
            v.shape = ir.Shape(v.const_value.shape)
        if v.name == "w2":
            v.const_value = ir.tensor(np.asarray(v.const_value.numpy()[:, :12]))
            v.shape = ir.Shape(v.const_value.shape)
    for n in after.graph:
        if n.name in ("c1", "relu"):
            n.outputs[0].shape = ir.Shape([1, 12, 10, 10])
    rows = {r["name"]: r for r in compare_layers(before, after)}
    assert set(rows) == {"c1", "c2"}
    assert (rows["c1"]["width_before"], rows["c1"]["width_after"]) == (16, 12)
    assert rows["c1"]["macs_after"] == 12 * 10 * 10 * 8 * 9
    assert rows["c2"]["macs_after"] == 16 * 10 * 10 * 12 * 9
    assert model_cost(after).macs == 12 * 10 * 10 * 8 * 9 + 16 * 10 * 10 * 12 * 9


def test_loaded_model_with_made_up_op(my_conv, tmp_path):
    """Through the public loader too (a custom-domain op keeps its recorded shapes)."""
    proto = ir.serde.serialize_model(_model("MyConv", DOMAIN))
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    model = gp.load(str(path))
    assert model_cost(model).macs == 16 * 10 * 10 * 8 * 9 + 16 * 10 * 10 * 16 * 9


@pytest.mark.parametrize("op,gates", [("RNN", 1), ("GRU", 3), ("LSTM", 4)])
@pytest.mark.parametrize("layout,directions", [(0, 1), (1, 2)])
def test_recurrent_layers_count_their_macs(op, gates, layout, directions):
    """A GRU between two Linear layers was counted as 0 MACs (the summary showed only the
    Linears' 2.85K of ~118K): per step and direction, gates·H·(input + H)."""
    from helpers import make_model

    steps, batch, inputs, hidden = 5, 2, 8, 6
    xs = [batch, steps, inputs] if layout else [steps, batch, inputs]
    attrs = {"hidden_size": hidden, "layout": layout}
    if directions == 2:
        attrs["direction"] = "bidirectional"
    node = helper.make_node(op, ["x", "W", "R"], ["y"], name="rec", **attrs)
    ys = [batch, steps, directions, hidden] if layout else [steps, directions, batch, hidden]
    rng = np.random.default_rng(0)
    m = make_model([node], [("x", xs)], [("y", ys)],
                   {"W": rng.standard_normal((directions, gates * hidden, inputs)).astype(np.float32),
                    "R": rng.standard_normal((directions, gates * hidden, hidden)).astype(np.float32)})
    model = gp.load(m.SerializeToString())
    want = directions * steps * batch * gates * hidden * (inputs + hidden)
    assert node_macs(next(iter(model.graph))) == want and model_cost(model).macs == want
