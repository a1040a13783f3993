"""Issue 13 §1: a model is analysed at the representative shape (`--input-shape`, the
calibration data's shape) but written with the dynamic dims of its inputs and outputs, no
shape math folded at that size and no static intermediate shapes; the oracle proves the
written model at two sizes of each dynamic dim."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import graphprune as gp
from graphprune.ir.shapes import dims_of
from graphprune.runtime import ort
from graphprune.workflow import PruneOptions, run_prune
from tests.helpers import make_model, w


def _convs_then_flatten(path):
    """x:[N,3,H,W] -> 3x3 Conv (3->8) -> Relu -> 1x1 Conv (8->8) -> Reshape to [N, 8, H·W],
    the N read from Shape at run time (folded at a static input it would become a constant)."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]), n("Relu", ["a"], ["r"]),
             n("Conv", ["r", "w2"], ["y"]), n("Shape", ["y"], ["s"]), n("Gather", ["s", "zero"], ["nb"], axis=0),
             n("Concat", ["nb", "rest"], ["target"], axis=0), n("Reshape", ["y", "target"], ["z"])]
    inits = {"w1": w(8, 3, 3, 3, seed=1), "b1": w(8, seed=3), "w2": w(8, 8, 1, 1, seed=2), "zero": i64(0),
             "rest": i64(8, -1)}
    m = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("z", ["N", 8, "HW"])], inits)
    path.write_bytes(m.SerializeToString())
    return path


def _dims(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_load_at_an_input_shape_analyses_there_and_stays_dynamic(tmp_path):
    path = _convs_then_flatten(tmp_path / "m.onnx")
    dynamic = gp.load(path)
    at = gp.load(path, input_shapes={"x": [1, 3, 16, 24]})
    assert [str(d) for d in at.graph.inputs[0].shape] == ["N", "3", "H", "W"]
    assert [str(d) for d in at.graph.outputs[0].shape] == ["N", "8", "HW"]
    values = {v.name: v for n in at.graph for v in n.outputs}
    assert dims_of(values["y"]) == [1, 8, 16, 24]  # analysed at the shape ...
    assert dims_of({v.name: v for n in dynamic.graph for v in n.outputs}["y"])[2:] != [16, 24]
    # ... with its shape math as dynamic as without it
    assert sorted(n.op_type for n in at.graph) == sorted(n.op_type for n in dynamic.graph)
    assert "Shape" in {n.op_type for n in at.graph}


def test_prune_at_an_input_shape_writes_the_dynamic_model(tmp_path):
    path = _convs_then_flatten(tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    res = run_prune(path, PruneOptions(ratio=0.5, input_shapes={"x": [1, 3, 16, 24]}), out=out)
    assert res.plan.tensors and res.shapes.sources == {"x": "--input-shape"}
    assert res.oracle.ok, res.oracle.summary()
    assert [s.shapes["x"] for s in res.oracle.sizes] == [(1, 3, 16, 24), (2, 3, 32, 32)]
    proto = onnx.load(str(out))
    assert _dims(proto.graph.input[0]) == ["N", 3, "H", "W"] and _dims(proto.graph.output[0]) == ["N", 8, "HW"]
    inits = {t.name for t in proto.graph.initializer}
    assert not [vi.name for vi in proto.graph.value_info if vi.name not in inits and vi.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal((3, 3, 20, 40)).astype(np.float32)
    assert ort.session(str(out)).run(None, {"x": x})[0].shape == (3, 8, 800)
