"""An op shape inference cannot type (here com.microsoft::Trilu, for which graphprune has
neither a shape nor a channel rule) must not freeze every Conv after it: a Conv's weight
fixes its channel counts (issue 12 §6)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from helpers import w
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.frontends.channel_shapes import complete_channel_shapes
from graphprune.ir.shapes import dims_of
from graphprune.runtime import oracle


def _after_ms_op() -> onnx.ModelProto:
    """conv(4→8) → com.microsoft::Trilu → conv(8→16) → relu → conv(16→12) → swish → conv(12→4),
    dynamic batch and spatial dims."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["h1"], name="c1", pads=[1, 1, 1, 1]),
             n("Trilu", ["h1"], ["g"], name="ms_trilu", domain="com.microsoft", upper=1),
             n("Conv", ["g", "w2", "b2"], ["h2"], name="c2", pads=[1, 1, 1, 1]),
             n("Relu", ["h2"], ["r2"], name="relu2"),
             n("Conv", ["r2", "w3", "b3"], ["h3"], name="c3"),
             n("Sigmoid", ["h3"], ["s3"], name="sig3"),
             n("Mul", ["h3", "s3"], ["m3"], name="swish3"),
             n("Conv", ["m3", "w4"], ["y"], name="c4")]
    inits = {"w1": w(8, 4, 3, 3, seed=1), "b1": w(8, seed=2), "w2": w(16, 8, 3, 3, seed=3), "b2": w(16, seed=4),
             "w3": w(12, 16, 1, 1, seed=5), "b3": w(12, seed=6), "w4": w(4, 12, 1, 1, seed=7)}
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, None, "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, None, "W"])],
                          [numpy_helper.from_array(a, k) for k, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


def test_convs_after_an_untyped_op_are_prunable():
    proto = _after_ms_op()
    model = gp.load(proto.SerializeToString())
    values = {o.name: o for node in model.graph for o in node.outputs}
    assert dims_of(values["g"]) == [None, 8, None, None]  # read off c2's weight
    assert dims_of(values["m3"])[:2] == [None, 12]
    dg = gp.analyze(model)
    assert sorted(g.num_atoms for g in dg.prunable_groups) == [12, 16]
    # the op without a rule still freezes what it touches
    assert any("com.microsoft::Trilu" in r for f in dg.frozen_groups for r in f.reasons)
    res = gp.prune(model, selection={g.id: list(range(0, g.num_atoms, 3)) for g in dg.prunable_groups})
    feeds = [{"x": np.random.default_rng(s).standard_normal((b, 4, h, wd)).astype(np.float32)}
             for s, (b, h, wd) in enumerate(((1, 5, 7), (2, 9, 4)))]
    r = oracle.check(ir.serde.deserialize_model(proto), res.model, res.plan, inputs=feeds, n_random=0)
    assert r.ok, r.diffs
    sliced = {t["name"] for t in res.plan.tensors}
    assert {"w2", "b2", "w3", "b3", "w4"} <= sliced


def test_completion_never_overrides_a_known_dim():
    """A contradiction (weight says 8 channels, the value says 6) changes nothing."""
    proto = _after_ms_op()
    model = ir.serde.deserialize_model(proto)
    g = next(o for node in model.graph for o in node.outputs if o.name == "g")
    g.shape = ir.Shape([None, 6, None, None])
    complete_channel_shapes(model)
    assert dims_of(g) == [None, 6, None, None]
    h2 = next(o for node in model.graph for o in node.outputs if o.name == "h2")
    assert dims_of(h2)[1] == 16  # the conv's output still follows its weight
