"""SparseGPT-style OBS pruning: a hand case, lower reconstruction error than magnitude
and than its own mask without the weight update, N:M and blocks, and the pass on a model."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import graphprune as gp
from graphprune.ir.constants import const_array
from graphprune.passes import PassContext, PassManager
from graphprune.passes.sparsity import masks as M
from graphprune.passes.sparsity.sparsegpt import column_blocks, sparsegpt
from graphprune.runtime.calibration import Calibration
from helpers import make_model


def err(W, Wh, X):
    return float(np.linalg.norm(X @ W.T - X @ Wh.T) ** 2)


def test_hand_case_obs_update():
    # rows (√3, √3), (1, -1): H = XᵀX/2 = [[2, 1], [1, 2]]; w = (0.4, 1) at 50%:
    # column 0 goes and column 1 absorbs 0.4 · H01/H11 = 0.2 -> (0, 1.2)
    X = np.array([[3 ** 0.5, 3 ** 0.5], [1.0, -1.0]])
    H = X.T @ X / 2
    W, keep = sparsegpt(np.array([[0.4, 1.0]]), H, [(0, 2)],
                        select=lambda s, a, b: M.unstructured_mask(s, 0.5), damp=0.0)
    np.testing.assert_allclose(W, [[0.0, 1.2]], atol=1e-12)
    assert keep.tolist() == [[False, True]]


def correlated(n=512, d=64, o=48, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    X = rng.standard_normal((n, d)) @ A * rng.uniform(0.2, 3.0, d)
    W = rng.standard_normal((o, d))
    return X, W


@pytest.mark.parametrize("fmt", ["unstructured", "2:4", "block4x1"])
def test_obs_beats_magnitude_and_its_own_mask(fmt):
    X, W = correlated()
    H = X.T @ X / len(X)
    if fmt == "unstructured":
        units, sel, nm = [(j, j + 1) for j in range(64)], (lambda s, a, b: M.unstructured_mask(s, 0.5)), None
        mag = M.unstructured_mask(np.abs(W), 0.5)
    elif fmt == "2:4":
        units, sel, nm = [(j, j + 4) for j in range(0, 64, 4)], None, (2, 4)
        mag = M.nm_mask(np.abs(W), 2, 4)
    else:
        units, nm = [(j, j + 1) for j in range(64)], None
        sel = lambda s, a, b: M.block_mask(s, 4, 1, 0.5)  # noqa: E731
        mag = M.block_mask(np.abs(W), 4, 1, 0.5)
    Wh, keep = sparsegpt(W, H, column_blocks(units, 16), select=sel, nm=nm, damp=0.01)
    assert abs((Wh == 0).mean() - 0.5) < 0.02
    assert ((Wh != 0) <= keep).all()
    e_obs, e_mag, e_own = err(W, Wh, X), err(W, W * mag, X), err(W, W * keep, X)
    assert e_obs < 0.8 * e_mag, (e_obs, e_mag)
    assert e_obs < e_own
    if fmt == "2:4":
        assert ((Wh != 0).reshape(48, -1, 4).sum(-1) <= 2).all()
    if fmt == "block4x1":
        t = (Wh != 0).reshape(12, 4, 64)
        assert (t.all(1) | ~t.any(1)).all()


def linear_model(W_mm):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="lin"), helper.make_node("Relu", ["h"], ["y"])]
    return make_model(nodes, [("x", [None, W_mm.shape[0]])], [("y", [None, W_mm.shape[1]])],
                      {"W": W_mm.astype(np.float32)})


def test_pass_sparsegpt_lower_error_than_magnitude_on_calibration_data():
    X, W = correlated(n=256, d=64, o=32, seed=3)
    X = X.astype(np.float32)
    proto = linear_model(W.T)
    calib = Calibration.from_batches([{"x": X[i:i + 64]} for i in range(0, 256, 64)])
    out = {}
    for crit in ("magnitude", "sparsegpt"):
        m = gp.load(proto.SerializeToString())
        ctx = PassContext()
        ctx.results["calibration"] = calib
        PassManager.parse(f"sparsify{{format=unstructured,sparsity=0.5,criterion={crit},"
                          "skip_last=false,min_params=0}").run(m, ctx)
        Wh = const_array(m.graph.initializers["W"]).T.astype(np.float64)
        assert (Wh == 0).sum() == W.size // 2
        out[crit] = err(W, Wh, X.astype(np.float64))
        rec = ctx.results["sparsity"]["tensors"]["W"]
        if crit == "sparsegpt":
            assert rec["obs_error"] < rec["mask_only_error"]
    assert out["sparsegpt"] < 0.8 * out["magnitude"], out


def test_pass_sparsegpt_conv_grouped():
    rng = np.random.default_rng(0)
    c = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "c"], ["y"], name="conv", pads=[1, 1, 1, 1], group=2)]
    proto = make_model(nodes, [("x", [None, 8, 6, 6])], [("y", [None, 8, 6, 6])], {"c": c})
    x = rng.standard_normal((8, 8, 6, 6)).astype(np.float32)
    m = gp.load(proto.SerializeToString())
    ctx = PassContext()
    ctx.results["calibration"] = Calibration.from_batches([{"x": x}])
    PassManager.parse("sparsify{format=2:4,criterion=sparsegpt,skip_first=false,skip_last=false,min_params=0}").run(m, ctx)
    ch = const_array(m.graph.initializers["c"])
    assert ((ch != 0).sum(1) <= 2).all()  # 2:4 along the 4 input channels of a group, per tap
    rec = ctx.results["sparsity"]["tensors"]["c"]
    assert rec["obs_error"] < rec["mask_only_error"]


def test_sequential_sweeps_run_layer_waves_on_the_sparsified_model():
    rng = np.random.default_rng(5)
    W1, W2 = rng.standard_normal((32, 48)), rng.standard_normal((48, 16))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="l1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["z"], name="l2"), helper.make_node("Relu", ["z"], ["y"])]
    proto = make_model(nodes, [("x", [None, 32])], [("y", [None, 16])],
                       {"W1": W1.astype(np.float32), "W2": W2.astype(np.float32)})
    calib = Calibration.from_batches([{"x": rng.standard_normal((64, 32)).astype(np.float32)} for _ in range(2)])
    errs = {}
    for seq in ("false", "true"):
        m = gp.load(proto.SerializeToString())
        ctx = PassContext()
        ctx.results["calibration"] = calib
        PassManager.parse(f"sparsify{{format=2:4,criterion=sparsegpt,sequential={seq},skip_last=false,"
                          "min_params=0}").run(m, ctx)
        for name in ("W1", "W2"):
            a = const_array(m.graph.initializers[name])
            assert ((a != 0).T.reshape(a.shape[1], -1, 4).sum(-1) <= 2).all()
        errs[seq] = ctx.results["sparsity"]["tensors"]["W2"]["obs_error"]
    assert errs["true"] != errs["false"]  # W2's Hessian came from the sparsified first layer


def test_pass_sparsegpt_conv_blocks_span_whole_kernels():
    """Block format on a conv: r output × c input channels × all taps (what the TVM block
    conv kernels skip), with the OBS update; the update still lowers the error."""
    rng = np.random.default_rng(1)
    c = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "c"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", [None, 8, 6, 6])], [("y", [None, 8, 6, 6])], {"c": c})
    m = gp.load(proto.SerializeToString())
    ctx = PassContext()
    ctx.results["calibration"] = Calibration.from_batches([{"x": rng.standard_normal((8, 8, 6, 6)).astype(np.float32)}])
    PassManager.parse("sparsify{format=block,block=4x2,sparsity=0.5,criterion=sparsegpt,skip_first=false,"
                      "skip_last=false,min_params=0}").run(m, ctx)
    t = (const_array(m.graph.initializers["c"]) != 0).reshape(2, 4, 4, 2, 9)
    assert (t.all(axis=(1, 3, 4)) | ~t.any(axis=(1, 3, 4))).all() and (~t.any(axis=(1, 3, 4))).sum() == 4
    rec = ctx.results["sparsity"]["tensors"]["c"]
    assert rec["obs_error"] < rec["mask_only_error"]
