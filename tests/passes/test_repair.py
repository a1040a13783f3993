"""Repair passes: hand-computable cases, shapes kept, reconstruction error strictly down.

Repair changes weights beyond zeroing, so the oracle (pruned == masked original) is
checked on the structural pruning step, *before* repair."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

import graphprune as gp
from graphprune.errors import UsageError
from graphprune.ir.constants import const_array
from graphprune.passes import PassContext, PassManager
from graphprune.passes.reconstruction._common import Undo, value_shapes
from graphprune.runtime import oracle
from graphprune.runtime.calibration import Calibration
from graphprune.runtime.ort import Runner
from helpers import make_model

RNG = np.random.default_rng(0)


def mlp_proto(bias2=True):
    """x[N,2] -Gemm(W1)-> h -Relu-> r -Gemm(W2,b2)-> y. Channel 2 of h is x0 + 5: its
    mean is ~5, so removing it shifts y by W2[2]·5 on average."""
    w1 = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    b1 = np.array([0, 0, 5], np.float32)
    w2 = np.array([[1, 0], [0, 1], [0.5, -1]], np.float32)
    inits = {"w1": w1, "b1": b1, "w2": w2}
    ins = ["r", "w2"] + (["b2"] if bias2 else [])
    if bias2:
        inits["b2"] = np.array([0.1, 0.2], np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ins, ["y"], name="fc2")]
    return make_model(nodes, [("x", [None, 2])], [("y", [None, 2])], inits)


def cnn_proto(seed=0):
    """conv3x3(4->8) -BN-Relu- conv3x3(8->8) -BN-Relu- conv1x1(8->4): BatchNorms below the pruning."""
    rng = np.random.default_rng(seed)

    def bn(name, c):
        return {f"{name}_s": rng.uniform(0.5, 1.5, c).astype(np.float32),
                f"{name}_b": rng.uniform(-0.5, 0.5, c).astype(np.float32),
                f"{name}_m": rng.uniform(-0.2, 0.2, c).astype(np.float32),
                f"{name}_v": rng.uniform(0.5, 2.0, c).astype(np.float32)}

    inits = {"w1": rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3,
             "w2": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
             "w3": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3,
             "b3": np.zeros(4, np.float32), **bn("bn1", 8), **bn("bn2", 8)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["n1"], name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["n2"], name="bn2"),
             helper.make_node("Relu", ["n2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3", kernel_shape=[1, 1])]
    return make_model(nodes, [("x", [None, 4, 6, 6])], [("y", [None, 4, 6, 6])], inits)


def calib_for(shape, n=4, seed=0, loc=0.0):
    rng = np.random.default_rng(seed)
    return Calibration.from_batches([{"x": (rng.standard_normal(shape) + loc).astype(np.float32)} for _ in range(n)])


def prune_then(proto, calib, selection_fn, repair: str):
    """Prune (oracle checked), then run `repair`; returns (model, ctx, shapes before repair)."""
    data = proto.SerializeToString()
    model = gp.load(data)
    ctx = PassContext()
    ctx.results["calibration"] = calib
    ctx.results["selection"] = selection_fn(gp.analyze(gp.load(data)))
    PassManager.parse("prune-channels").run(model, ctx)
    assert oracle.check(ir.load_from_string(data) if hasattr(ir, "load_from_string") else
                        ir.serde.deserialize_model(proto), model, ctx.results["plan"]).ok
    shapes = value_shapes(model)
    PassManager.parse(repair).run(model, ctx)
    return model, ctx, shapes


def assert_shapes_kept(model, shapes):
    """Every tensor keeps its shape; the only new tensors are biases repair added."""
    now = value_shapes(model)
    assert {k: now[k] for k in shapes if k in now} == shapes
    assert all(k.endswith("_repair_bias") for k in set(now) - set(shapes)), set(now) - set(shapes)


def first_group(channels):
    return lambda dg: {dg.prunable_groups[0].id: channels}


def layer_error(model, dense, calib, x_name, y_name, kept_out=None):
    """Mean squared error of one layer's output vs the dense one, on the calibration data."""
    rp, rd = Runner(model, [y_name]), Runner(dense, [y_name])
    num = 0.0
    for b in calib:
        yp, yd = rp(b)[y_name], rd(b)[y_name]
        if kept_out is not None:
            yd = np.take(yd, kept_out, axis=1)
        num += float(((yp - yd) ** 2).sum())
    return num


def test_bias_compensation_hand_computed():
    calib = calib_for((8, 2), n=3, seed=1)
    model, ctx, shapes = prune_then(mlp_proto(), calib, first_group([2]), "bias-compensate")
    assert_shapes_kept(model, shapes)
    r2 = np.concatenate([np.maximum(b["x"][:, 0] + 5, 0) for b in calib])
    expected = np.array([0.1, 0.2]) + np.array([0.5, -1]) * r2.mean()
    fc2 = next(n for n in model.graph if n.name == "fc2")
    np.testing.assert_allclose(const_array(fc2.inputs[2]), expected, rtol=1e-5)
    rep = ctx.results["repair"][0]
    assert rep["pass"] == "bias-compensate" and rep["error_after"] < rep["error_before"] and not rep["reverted"]


def test_bias_compensation_creates_a_bias_and_reduces_layer_error():
    calib = calib_for((8, 2), n=3, seed=2)
    proto = mlp_proto(bias2=False)
    dense = gp.load(proto.SerializeToString())
    model, ctx, _ = prune_then(proto, calib, first_group([2]), "bias-compensate")
    fc2 = next(n for n in model.graph if n.name == "fc2")
    assert len(fc2.inputs) == 3 and const_array(fc2.inputs[2]).shape == (2,)
    before = gp.load(proto.SerializeToString())
    ctx2 = PassContext()
    ctx2.results["selection"] = first_group([2])(gp.analyze(gp.load(proto.SerializeToString())))
    PassManager.parse("prune-channels").run(before, ctx2)
    assert layer_error(model, dense, calib, "r", "y") < layer_error(before, dense, calib, "r", "y")


def test_lsq_matches_least_squares_and_reduces_error():
    calib = calib_for((16, 2), n=3, seed=3)
    proto = mlp_proto()
    model, ctx, shapes = prune_then(proto, calib, first_group([2]), "lsq-reconstruct{damp=1e-9}")
    assert_shapes_kept(model, shapes)
    # the closed form: [r0 r1 1] W = y_dense
    X = np.concatenate([b["x"] for b in calib]).astype(np.float64)
    r = np.maximum(X @ np.array([[1, 0, 1], [0, 1, 0]]) + [0, 0, 5], 0)
    y = r @ np.array([[1, 0], [0, 1], [0.5, -1]]) + [0.1, 0.2]
    A = np.concatenate([r[:, :2], np.ones((len(r), 1))], axis=1)
    sol, *_ = np.linalg.lstsq(A, y, rcond=None)
    fc2 = next(n for n in model.graph if n.name == "fc2")
    np.testing.assert_allclose(const_array(fc2.inputs[1]), sol[:2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(const_array(fc2.inputs[2]), sol[2], rtol=1e-4, atol=1e-5)
    rep = ctx.results["repair"][0]
    assert rep["layers"] and all(layer["error_after"] < layer["error_before"] for layer in rep["layers"])
    assert rep["error_after"] < rep["error_before"]


def mlp_matmul_proto():
    """mlp_proto as the PyTorch exporters write nn.Linear on [N, T, features]: MatMul, then
    an Add of the bias (channel 2 of h is x0 + 5 again)."""
    inits = {"w1": np.array([[1, 0, 1], [0, 1, 0]], np.float32), "b1": np.array([0, 0, 5], np.float32),
             "w2": np.array([[1, 0], [0, 1], [0.5, -1]], np.float32), "b2": np.array([0.1, 0.2], np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h"], name="fc1_bias"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y0"], name="fc2"),
             helper.make_node("Add", ["y0", "b2"], ["y"], name="fc2_bias")]
    return make_model(nodes, [("x", [None, 3, 2])], [("y", [None, 3, 2])], inits)


def test_a_matmuls_bias_add_is_its_bias_for_both_repairs():
    """bias-compensate skipped MatMul layers (no bias input) and lsq-reconstruct fitted them
    without an intercept, so a removed channel's mean stayed lost in every transformer
    export; the Add after the MatMul is now the layer's bias: the hand-computed shift, and
    the closed-form least squares with an intercept."""
    calib = calib_for((8, 3, 2), n=3, seed=1)
    model, ctx, shapes = prune_then(mlp_matmul_proto(), calib, first_group([2]), "bias-compensate")
    assert_shapes_kept(model, shapes)
    r2 = np.concatenate([np.maximum(b["x"][..., 0] + 5, 0).ravel() for b in calib])
    bias = next(n for n in model.graph if n.name == "fc2_bias")
    np.testing.assert_allclose(const_array(bias.inputs[1]), np.array([0.1, 0.2]) + np.array([0.5, -1]) * r2.mean(),
                               rtol=1e-5)
    assert ctx.results["repair"][0]["layers"][0]["layer"] == "fc2"

    calib = calib_for((16, 3, 2), n=3, seed=3)
    model, ctx, shapes = prune_then(mlp_matmul_proto(), calib, first_group([2]), "lsq-reconstruct{damp=1e-9}")
    assert_shapes_kept(model, shapes)
    X = np.concatenate([b["x"].reshape(-1, 2) for b in calib]).astype(np.float64)
    r = np.maximum(X @ np.array([[1, 0, 1], [0, 1, 0]]) + [0, 0, 5], 0)
    y = r @ np.array([[1, 0], [0, 1], [0.5, -1]]) + [0.1, 0.2]
    sol, *_ = np.linalg.lstsq(np.concatenate([r[:, :2], np.ones((len(r), 1))], axis=1), y, rcond=None)
    fc2 = next(n for n in model.graph if n.name == "fc2")
    bias = next(n for n in model.graph if n.name == "fc2_bias")
    np.testing.assert_allclose(const_array(fc2.inputs[1]), sol[:2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(const_array(bias.inputs[1]), sol[2], rtol=1e-4, atol=1e-5)
    rep = ctx.results["repair"][0]
    assert rep["layers"][0]["unknowns"] == 3 and rep["error_after"] < rep["error_before"]


def test_the_bias_of_the_skip_layer_norm_a_matmul_feeds_is_its_bias():
    """A model optimized for ONNX Runtime adds the projection's bias inside
    SkipLayerNormalization(input, skip, gamma, beta, bias): bias-compensate "changed no
    layer" there; now that bias input takes the hand-computed shift."""
    proto = mlp_matmul_proto()
    nodes = [n for n in proto.graph.node if n.name != "fc2_bias"]
    nodes.append(helper.make_node("SkipLayerNormalization", ["y0", "x", "g", "be", "b2"], ["y"], name="fc2_norm",
                                  domain="com.microsoft", epsilon=1e-5))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.extend([helper.make_tensor("g", 1, [2], [1.0, 1.0]),
                                    helper.make_tensor("be", 1, [2], [0.0, 0.0])])
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    calib = calib_for((8, 3, 2), n=3, seed=1)
    model, ctx, shapes = prune_then(proto, calib, first_group([2]), "bias-compensate")
    assert_shapes_kept(model, shapes)
    r2 = np.concatenate([np.maximum(b["x"][..., 0] + 5, 0).ravel() for b in calib])
    norm = next(n for n in model.graph if n.name == "fc2_norm")
    np.testing.assert_allclose(const_array(norm.inputs[4]), np.array([0.1, 0.2]) + np.array([0.5, -1]) * r2.mean(),
                               rtol=1e-5)
    assert ctx.results["repair"][0]["layers"][0]["layer"] == "fc2"


@pytest.mark.parametrize("layers", ["consumers", "all"])
def test_lsq_on_convs_keeps_shapes_and_strictly_reduces_error(layers):
    calib = calib_for((2, 4, 6, 6), n=4, seed=4)
    proto = cnn_proto()
    dense = gp.load(proto.SerializeToString())

    def sel(dg):
        return {g.id: [0, 3, 5] for g in dg.prunable_groups}

    plain = gp.load(proto.SerializeToString())
    c0 = PassContext()
    c0.results["selection"] = sel(gp.analyze(gp.load(proto.SerializeToString())))
    PassManager.parse("prune-channels").run(plain, c0)
    model, ctx, shapes = prune_then(proto, calib, sel, f"lsq-reconstruct{{layers={layers}}}")
    assert_shapes_kept(model, shapes)
    rep = ctx.results["repair"][0]
    names = {layer["layer"] for layer in rep["layers"]}
    assert {"conv2", "conv3"} <= names
    assert all(layer["error_after"] < layer["error_before"] for layer in rep["layers"])
    assert rep["error_after"] < rep["error_before"] and not rep["reverted"]
    # measured independently: the last layer's output error on the calibration set went down
    assert layer_error(model, dense, calib, "r2", "y") < layer_error(plain, dense, calib, "r2", "y")


def test_bn_reestimate_data_mode_is_the_empirical_statistics():
    calib = calib_for((2, 4, 6, 6), n=3, seed=5, loc=0.3)
    proto = cnn_proto(1)
    model, ctx, shapes = prune_then(proto, calib, lambda dg: {dg.prunable_groups[0].id: [1, 2, 6]},
                                    "bn-reestimate{match=data,folded=false,guard=false}")
    assert_shapes_kept(model, shapes)
    # bn2's input in the pruned model: its statistics are now the BN's running statistics
    run = Runner(model, ["c2"])
    c2 = np.concatenate([run(b)["c2"] for b in calib]).astype(np.float64)
    bn2 = next(n for n in model.graph if n.name == "bn2")
    np.testing.assert_allclose(const_array(bn2.inputs[3]), c2.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(const_array(bn2.inputs[4]), c2.var((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_bn_reestimate_dense_matching_reduces_error():
    calib = calib_for((2, 4, 6, 6), n=3, seed=6, loc=0.5)
    proto = cnn_proto(2)
    model, ctx, shapes = prune_then(proto, calib, lambda dg: {dg.prunable_groups[0].id: [1, 4]},
                                    "bn-reestimate")
    assert_shapes_kept(model, shapes)
    rep = ctx.results["repair"][0]
    assert "bn2" in rep["nodes"] and rep["error_after"] < rep["error_before"] and not rep["reverted"]
    # hand formula on one channel: normalised pruned input has the dense mean/spread
    dense = gp.load(proto.SerializeToString())
    rp, rd = Runner(model, ["c2"]), Runner(dense, ["c2"])
    c2p = np.concatenate([rp(b)["c2"] for b in calib]).astype(np.float64)
    c2d = np.concatenate([rd(b)["c2"] for b in calib]).astype(np.float64)
    bn2 = next(n for n in model.graph if n.name == "bn2")
    mu1, var1 = const_array(bn2.inputs[3]), const_array(bn2.inputs[4])
    mu0 = const_array(next(n for n in dense.graph if n.name == "bn2").inputs[3])
    var0 = const_array(next(n for n in dense.graph if n.name == "bn2").inputs[4])
    zp = (c2p - mu1[None, :, None, None]) / np.sqrt(var1 + 1e-5)[None, :, None, None]
    zd = (c2d - mu0[None, :, None, None]) / np.sqrt(var0 + 1e-5)[None, :, None, None]
    np.testing.assert_allclose(zp.mean((0, 2, 3)), zd.mean((0, 2, 3)), atol=1e-3)
    np.testing.assert_allclose(zp.std((0, 2, 3)), zd.std((0, 2, 3)), rtol=1e-3)


def test_folded_bn_layers_get_an_affine_correction():
    calib = calib_for((8, 2), n=3, seed=7)
    model, ctx, shapes = prune_then(mlp_proto(), calib, first_group([2]), "bn-reestimate")
    assert_shapes_kept(model, shapes)
    rep = ctx.results["repair"][0]
    assert rep["nodes"] == ["fc2"] and rep["error_after"] < rep["error_before"]


def test_repair_needs_calibration_and_dense_model(samples_dir):
    model = gp.load(samples_dir / "tiny_resnet.onnx")
    with pytest.raises(UsageError, match="calibration"):
        PassManager.parse("prune-channels,lsq-reconstruct").run(model)
    ctx = PassContext()
    ctx.results["calibration"] = calib_for((1, 3, 16, 16))
    with pytest.raises(UsageError, match="dense model"):
        PassManager.parse("bn-reestimate").run(gp.load(samples_dir / "tiny_resnet.onnx"), ctx)


def test_undo_restores_constants_and_removes_added_bias():
    model = gp.load(mlp_proto(bias2=False).SerializeToString())
    fc2 = next(n for n in model.graph if n.name == "fc2")
    w = const_array(fc2.inputs[1]).copy()
    u = Undo()
    u.set(fc2.inputs[1], w * 2)
    u.add_bias(model, fc2, 2, np.ones(2))
    assert len(fc2.inputs) == 3
    u.revert(model)
    np.testing.assert_array_equal(const_array(fc2.inputs[1]), w)
    assert len(fc2.inputs) == 2 and not any("repair_bias" in k for k in model.graph.initializers)


def test_cli_repair_runs_after_the_oracle(samples_dir, tmp_path):
    from graphprune.cli.main import main

    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "c.npz", input=x)
    out = tmp_path / "s.onnx"
    rc = main(["prune", str(samples_dir / "tiny_mobilenet.onnx"), "-o", str(out), "--calib", str(tmp_path / "c.npz"),
               "--criterion", "wanda", "--allocation", "global", "--target-macs", "0.7", "--repair", "all",
               "--no-bench"])
    assert rc == 0 and out.exists()
    import json

    settings = json.loads((tmp_path / "s.plan.json").read_text())["settings"]
    assert [r["pass"] for r in settings["repair"]] == ["bias-compensate", "bn-reestimate", "lsq-reconstruct"]
    assert main(["prune", str(samples_dir / "tiny_mobilenet.onnx"), "-o", str(tmp_path / "t.onnx"),
                 "--repair", "lsq", "--no-bench"]) == 2
    # a pipeline with repair passes is split: the oracle checks the pruning part
    rc = main(["prune", str(samples_dir / "tiny_mobilenet.onnx"), "-o", str(tmp_path / "u.onnx"), "--calib",
               str(tmp_path / "c.npz"), "--pipeline", "prune-channels{ratio=0.4},lsq-reconstruct", "--no-bench"])
    assert rc == 0
