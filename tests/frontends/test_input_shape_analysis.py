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


def _mlp_over_positions(path):
    """x:[N, 40, 120] -> MatMul + Add -> Relu -> MatMul + Add: with static dims ONNX Runtime
    turns each MatMul + Add into a Gemm behind a Reshape to (N·40, 120) at that N."""
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["h0"]), n("Add", ["h0", "b1"], ["h1"]), n("Relu", ["h1"], ["h2"]),
             n("MatMul", ["h2", "w2"], ["h3"]), n("Add", ["h3", "b2"], ["y"])]
    inits = {"w1": w(120, 64, seed=1), "b1": w(64, seed=2), "w2": w(64, 120, seed=3), "b2": w(120, seed=4)}
    m = make_model(nodes, [("x", ["N", 40, 120])], [("y", ["N", 40, 120])], inits)
    path.write_bytes(m.SerializeToString())
    return path


def test_calibration_batches_of_another_size_than_the_input_shape(tmp_path):
    """`--input-shape x:1,40,120` with calibration batches of 8 and 4: the statistics, the
    repair and the quality gate run the model on those batches. The sessions they built
    carried the analysis shapes (batch 1), and ONNX Runtime failed inside its fused Gemm
    ('gemm_input_reshape ... cannot be reshaped')."""
    from graphprune.ir.serialize import to_proto
    from graphprune.runtime.calibration import Calibration

    path = _mlp_over_positions(tmp_path / "m.onnx")
    at = gp.load(path, input_shapes={"x": [1, 40, 120]})
    assert dims_of({v.name: v for n in at.graph for v in n.outputs}["h0"]) == [1, 40, 64]  # analysed at batch 1
    # what ORT is handed has the types of the intermediate values but none of those shapes
    infos = {vi.name: vi for vi in to_proto(at).graph.value_info}
    assert infos["h0"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not infos["h0"].type.tensor_type.HasField("shape")
    rng = np.random.default_rng(0)
    calib = Calibration.from_batches([{"x": rng.standard_normal((b, 40, 120)).astype(np.float32)} for b in (8, 4)])
    res = run_prune(path, PruneOptions(ratio=0.25, round_to=1, criterion="wanda", repair="lsq", calib=calib,
                                       max_drop=0.5, input_shapes={"x": [1, 40, 120]}))
    assert res.shapes.sources == {"x": "--input-shape"} and res.oracle.ok, res.oracle.summary()
    assert res.after.macs < 0.8 * res.before.macs
    assert [r["pass"] for r in res.repair] == ["lsq-reconstruct"]
    assert ort.session(res.model).run(None, {"x": calib.first()["x"]})[0].shape == (8, 40, 120)
