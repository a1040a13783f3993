"""The `sparsify` pass on small ONNX models: layouts (Gemm transB, MatMul [K, N], Conv,
grouped conv), exact sparsity, protected / skipped layers, metadata round trip, ONNX
checker + ORT, and the sparsity oracle: the sparsified model == the original model with
the same weights zeroed by numpy."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphprune as gp
from graphprune.errors import UsageError
from graphprune.ir.constants import const_array
from graphprune.passes import PassContext, PassManager
from graphprune.runtime import ort
from graphprune.runtime.calibration import Calibration
from graphprune.sparsity_meta import read_sparsity, write_sparsity
from helpers import make_model, w

RNG = np.random.default_rng(0)
ALL = "skip_first=false,skip_last=false,min_params=0"


def mlp_proto():
    """x[N,16] -Gemm(transB, W1[32,16])-> Relu -MatMul(W2[32,24])-> Relu -Gemm(W3[24,8])-> y"""
    inits = {"W1": w(32, 16, seed=1), "b1": w(32, seed=2), "W2": w(32, 24, seed=3), "W3": w(24, 8, seed=4)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "W2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "W3"], ["y"], name="head")]
    return make_model(nodes, [("x", [None, 16])], [("y", [None, 8])], inits)


def cnn_proto():
    """Conv3x3 (4->8) -> Relu -> Conv3x3 (8->8, group 2) -> Relu -> Conv1x1 (8->16) -> Relu
    -> Conv3x3 depthwise (16) -> GAP -> Flatten -> Gemm(10)"""
    inits = {"c1": w(8, 4, 3, 3, seed=5), "c2": w(8, 4, 3, 3, seed=6), "c3": w(16, 8, 1, 1, seed=7),
             "c4": w(16, 1, 3, 3, seed=8), "fc": w(10, 16, seed=9)}
    nodes = [helper.make_node("Conv", ["x", "c1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2"], ["a2"], name="conv2", pads=[1, 1, 1, 1], group=2),
             helper.make_node("Relu", ["a2"], ["r2"]),
             helper.make_node("Conv", ["r2", "c3"], ["a3"], name="conv3"),
             helper.make_node("Relu", ["a3"], ["r3"]),
             helper.make_node("Conv", ["r3", "c4"], ["a4"], name="dw", pads=[1, 1, 1, 1], group=16),
             helper.make_node("GlobalAveragePool", ["a4"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="classifier", transB=1)]
    return make_model(nodes, [("x", [None, 4, 8, 8])], [("y", [None, 10])], inits)


def run(proto, pipeline, calib=None):
    model = gp.load(proto.SerializeToString())
    ctx = PassContext()
    if calib is not None:
        ctx.results["calibration"] = calib
    PassManager.parse(pipeline).run(model, ctx)
    return model, ctx.results["sparsity"]


def weights(model) -> dict[str, np.ndarray]:
    return {n: const_array(v) for n, v in model.graph.initializers.items()}


def masked_original(proto, sparse_model) -> onnx.ModelProto:
    """The original proto with every weight zeroed where the sparsified model has a zero
    (and otherwise the ORIGINAL values): the sparsity analogue of the oracle."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    sw = weights(sparse_model)
    for t in out.graph.initializer:
        a = numpy_helper.to_array(t)
        if t.name in sw:
            t.CopyFrom(numpy_helper.from_array(np.where(sw[t.name] == 0, 0, a).astype(a.dtype), t.name))
    return out


def assert_same_outputs(a, b, feeds):
    ya = ort.session(a.SerializeToString()).run(None, feeds)
    yb = ort.session(b.SerializeToString()).run(None, feeds)
    for p, q in zip(ya, yb, strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def saved_checked(model, tmp_path):
    path = tmp_path / "sparse.onnx"
    gp.save(model, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


@pytest.mark.parametrize("fmt", ["format=unstructured,sparsity=0.6", "format=2:4", "format=4:8", "format=1:4",
                                 "format=block,block=4x1,sparsity=0.5", "format=block:1x4,sparsity=0.75"])
def test_mlp_formats_layouts_and_oracle(fmt, tmp_path):
    proto = mlp_proto()
    model, res = run(proto, f"sparsify{{{fmt},{ALL}}}")
    assert set(res["tensors"]) == {"W1", "W2", "W3"}
    sw, orig = weights(model), {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # logical [out, in] views: Gemm transB=1 is [N, K]; MatMul and Gemm transB=0 are [K, N]
    logical = {"W1": sw["W1"], "W2": sw["W2"].T, "W3": sw["W3"].T}
    meta = read_sparsity(model)["tensors"]
    assert (meta["W1"]["out_axis"], meta["W1"]["in_axis"]) == (0, 1)
    assert (meta["W2"]["out_axis"], meta["W2"]["in_axis"], meta["W2"]["op"]) == (1, 0, "MatMul")
    for name, L in logical.items():
        nz = L != 0
        if "2:4" in fmt or "4:8" in fmt or "1:4" in fmt:
            n, m = (2, 4) if "2:4" in fmt else (4, 8) if "4:8" in fmt else (1, 4)
            assert (nz.reshape(L.shape[0], -1, m).sum(-1) <= n).all()
            assert abs((~nz).mean() - (1 - n / m)) < 1e-9
        elif "unstructured" in fmt:
            assert (~nz).sum() == round(0.6 * L.size)
        assert abs(meta[name]["sparsity"] - (~nz).mean()) < 1e-12
        # magnitude: the surviving weights are unchanged and the zeros are the smallest ones
        o = orig[name] if name == "W1" else orig[name].T
        assert np.array_equal(L[nz], o[nz])
        if "unstructured" in fmt:
            assert np.abs(o[~nz]).max() <= np.abs(o[nz]).min()
    path = saved_checked(model, tmp_path)
    assert read_sparsity(path)["tensors"] == meta  # round trip through the file
    feeds = {"x": RNG.standard_normal((5, 16)).astype(np.float32)}
    assert_same_outputs(onnx.load(str(path)), masked_original(proto, model), feeds)


def test_block_masks_are_whole_blocks_in_weight_layout():
    proto = mlp_proto()
    model, _ = run(proto, f"sparsify{{format=block,block=8x1,sparsity=0.5,{ALL}}}")
    W2 = weights(model)["W2"].T  # logical [24 out, 32 in]
    tiles = (W2 != 0).reshape(3, 8, 32)  # 8 output channels x 1 input channel
    assert (tiles.all(1) | ~tiles.any(1)).all()


def test_cnn_conv_layouts_grouped_and_skips(tmp_path):
    proto = cnn_proto()
    model, res = run(proto, "sparsify{format=block,block=4x2,sparsity=0.5,min_params=0}")
    reasons = {s["layer"]: s["reason"] for s in res["skipped"]}
    assert "first convolution" in reasons["conv1"]
    assert "depthwise" in reasons["dw"]
    assert "final classifier" in reasons["classifier"]
    assert set(res["tensors"]) == {"c2", "c3"}
    c2 = weights(model)["c2"]  # [8, 4 per group, 3, 3], group 2: blocks of 4 outputs x 2 in-channels
    t = (c2 != 0).reshape(2, 4, 2, 2, 9)  # (row block, 4 rows, col block, 2 channels, tap)
    whole = t.all(axis=(1, 3, 4)) | ~t.any(axis=(1, 3, 4))  # a conv block spans whole 3x3 kernels
    assert whole.all() and (~t.any(axis=(1, 3, 4))).any()
    path = saved_checked(model, tmp_path)
    feeds = {"x": RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)}
    assert_same_outputs(onnx.load(str(path)), masked_original(proto, model), feeds)


def test_nm_conv_groups_run_along_input_channels_at_each_tap():
    proto = cnn_proto()
    model, res = run(proto, "sparsify{format=2:4,min_params=0}")
    c3 = weights(model)["c3"]  # [16, 8, 1, 1]
    assert ((c3[:, :, 0, 0] != 0).reshape(16, 2, 4).sum(-1) == 2).all()
    c2 = weights(model)["c2"]  # 4 in-channels per group: one group of 4 per tap
    assert ((c2 != 0).sum(1) == 2).all()


def test_pattern_and_connectivity():
    proto = cnn_proto()
    model, res = run(proto, "sparsify{format=pattern:4,patterns=3,connectivity=0.25,skip_first=false,min_params=0}")
    assert set(res["tensors"]) == {"c1", "c2"}  # 3x3, not depthwise; c3 is 1x1
    assert any(s["weight"] == "c3" and "3x3" in s["reason"] for s in res["skipped"])
    shapes = set()
    for name in ("c1", "c2"):
        k = (weights(model)[name] != 0).reshape(-1, 9)
        alive = k.any(1)
        assert (~alive).sum() == round(0.25 * len(k))  # connectivity: whole kernels at the ratio
        assert (k[alive].sum(1) == 4).all()
        shapes |= {tuple(np.flatnonzero(r)) for r in k[alive]}
        meta = read_sparsity(model)["tensors"][name]
        assert meta["format"] == "pattern" and meta["pattern_k"] == 4 and len(meta["patterns"]) == 3
    assert len(shapes) <= 3
    # connectivity removed the lowest-norm kernels
    orig = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "c1")).reshape(-1, 9)
    alive = (weights(model)["c1"] != 0).reshape(-1, 9).any(1)
    assert np.linalg.norm(orig[~alive], axis=1).max() <= np.linalg.norm(orig[alive], axis=1).min()


def test_protected_layers_untouched_and_global_scope():
    proto = mlp_proto()
    model, res = run(proto, f"sparsify{{format=unstructured,sparsity=0.5,ignore=[fc2],{ALL}}}")
    assert "W2" not in res["tensors"]
    assert np.array_equal(weights(model)["W2"], numpy_helper.to_array(proto.graph.initializer[2]))
    model, res = run(proto, f"sparsify{{format=unstructured,sparsity=0.5,ignore=[W*],{ALL}}}")  # a glob
    assert not res["tensors"]
    model, res = run(proto, f"sparsify{{format=unstructured,sparsity=0.5,scope=global,{ALL}}}")
    sw = weights(model)
    total = sum(sw[k].size for k in ("W1", "W2", "W3"))
    zeros = sum((sw[k] == 0).sum() for k in ("W1", "W2", "W3"))
    assert zeros == round(0.5 * total)
    assert len({round(res["tensors"][k]["sparsity"], 3) for k in ("W1", "W2", "W3")}) > 1  # not uniform


def test_default_skips_last_layer_and_min_params():
    model, res = run(mlp_proto(), "sparsify{format=unstructured,sparsity=0.5}")
    reasons = {s["weight"]: s["reason"] for s in res["skipped"]}
    assert "min_params" in reasons["W1"] and "min_params" in reasons["W2"]  # 512 and 768 weights < 1024
    assert res["tensors"] == {}
    model, res = run(mlp_proto(), "sparsify{format=unstructured,sparsity=0.5,min_params=600}")
    assert set(res["tensors"]) == {"W2"}
    model, res = run(mlp_proto(), "sparsify{format=unstructured,sparsity=0.5,min_params=0}")
    reasons = {s["weight"]: s["reason"] for s in res["skipped"]}
    assert "final classifier" in reasons["W3"] and set(res["tensors"]) == {"W1", "W2"}


def skewed_linear():
    """y = x @ W with W [2 in, 2 out] = [[1, 1], [2, 2]] (MatMul layout): input 0 is huge."""
    W = np.array([[1.0, 1.0], [2.0, 2.0]], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="lin")]
    proto = make_model(nodes, [("x", [None, 2])], [("y", [None, 2])], {"W": W})
    x = np.stack([RNG.standard_normal(64) * 100, RNG.standard_normal(64)], 1).astype(np.float32)
    return proto, Calibration.from_batches([{"x": x[:32]}, {"x": x[32:]}])


def test_wanda_differs_from_magnitude_on_skewed_activations():
    proto, calib = skewed_linear()
    mag, _ = run(proto, f"sparsify{{format=unstructured,sparsity=0.5,{ALL}}}")
    wan, _ = run(proto, f"sparsify{{format=unstructured,sparsity=0.5,criterion=wanda,{ALL}}}", calib)
    # magnitude drops the weights of input 0 (|1| < |2|); wanda keeps them (1*‖x0‖ >> 2*‖x1‖)
    assert weights(mag)["W"].tolist() == [[0, 0], [2, 2]]
    assert weights(wan)["W"].tolist() == [[1, 1], [0, 0]]


def test_data_aware_criteria_need_calibration():
    for crit in ("wanda", "sparsegpt"):
        with pytest.raises(UsageError, match="calibration"):
            run(mlp_proto(), f"sparsify{{format=unstructured,sparsity=0.5,criterion={crit}}}")


def test_metadata_helpers_on_proto_and_ir():
    proto = mlp_proto()
    rec = {"tensors": {"W1": {"format": "n:m", "n": 2, "m": 4, "sparsity": 0.5}}}
    write_sparsity(proto, rec)
    write_sparsity(proto, {"tensors": {"W2": {"format": "unstructured", "sparsity": 0.3}}})
    got = read_sparsity(proto)
    assert got["version"] == 1 and set(got["tensors"]) == {"W1", "W2"}
    m = gp.load(proto.SerializeToString())
    assert read_sparsity(m)["tensors"]["W1"]["n"] == 2
    assert read_sparsity(mlp_proto()) == {"version": 1, "tensors": {}}
    # a name the model does not have was recorded (and shown as "missing"): refused
    for target in (proto, m):
        with pytest.raises(UsageError, match=r"\['W9'\] name no constant tensor"):
            write_sparsity(target, {"tensors": {"W9": {"format": "unstructured", "sparsity": 0.3}}})
    assert set(read_sparsity(proto)["tensors"]) == {"W1", "W2"}


def test_api_sparsify_with_calibration_npz(tmp_path):
    proto, _ = skewed_linear()
    x = np.stack([RNG.standard_normal(32) * 100, RNG.standard_normal(32)], 1).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    m = gp.load(proto.SerializeToString())
    res = gp.sparsify(m, 0.5, criterion="wanda", calib=str(tmp_path / "calib.npz"), skip_last=False, min_params=0)
    assert res.overall == 0.5 and res.tensors["W"]["criterion"] == "wanda"
    assert gp.read_sparsity(m)["tensors"]["W"]["format"] == "unstructured"
    assert weights(m)["W"].tolist() == [[1, 1], [0, 0]]


def test_conv_transpose_is_skipped_with_a_reason():
    nodes = [helper.make_node("ConvTranspose", ["x", "ct"], ["y"], name="up", strides=[2, 2])]
    proto = make_model(nodes, [("x", [1, 8, 4, 4])], [("y", [1, 8, 9, 9])], {"ct": w(8, 8, 3, 3, seed=11)})
    model, res = run(proto, f"sparsify{{format=unstructured,sparsity=0.5,{ALL}}}")
    assert res["tensors"] == {} and "ConvTranspose" in res["skipped"][0]["reason"]
    assert (weights(model)["ct"] != 0).all()


def test_constant_node_weights_and_data_aware_conv_formats(tmp_path):
    """Weights held in Constant nodes (as in PP-OCR) are rewritten in place; wanda works on
    grouped convs and with patterns; the result still runs and matches the numpy masking."""
    proto = cnn_proto()
    consts = []
    for t in list(proto.graph.initializer):
        if t.name in ("c2", "c3"):
            consts.append(helper.make_node("Constant", [], [t.name], value=t))
            proto.graph.initializer.remove(t)
    nodes = consts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto, full_check=True)
    x = RNG.standard_normal((4, 4, 8, 8)).astype(np.float32) * np.array([5, 1, 1, 0.2], np.float32)[:, None, None]
    calib = Calibration.from_batches([{"x": x}])
    for fmt in ("format=unstructured,sparsity=0.5,scope=global", "format=block,block=2x2,sparsity=0.5",
                "format=pattern:3,skip_first=false"):
        model, res = run(proto, f"sparsify{{{fmt},criterion=wanda,min_params=0}}", calib)
        assert "c2" in res["tensors"]
        path = saved_checked(model, tmp_path)
        got = onnx.load(str(path))
        zeroed = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in got.graph.node
                  if n.op_type == "Constant"}
        assert (zeroed["c2"] == 0).any() and read_sparsity(got)["tensors"]["c2"]["criterion"] == "wanda"
        ref = onnx.ModelProto()
        ref.CopyFrom(proto)
        for n in ref.graph.node:
            if n.op_type == "Constant" and n.output[0] in zeroed:
                a = numpy_helper.to_array(n.attribute[0].t)
                n.attribute[0].t.CopyFrom(numpy_helper.from_array(np.where(zeroed[n.output[0]] == 0, 0, a), n.output[0]))
        for t in ref.graph.initializer:
            sw = weights(model)
            if t.name in sw:
                a = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array(np.where(sw[t.name] == 0, 0, a).astype(a.dtype), t.name))
        assert_same_outputs(got, ref, {"x": x[:2]})


def test_connectivity_is_refused_with_a_format_it_does_not_apply_to():
    """--connectivity with an unstructured, N:M or block format was ignored without a word."""
    from graphprune.passes.sparsity.spec import parse_spec

    for fmt in ("unstructured", "2:4", "block:4x1"):
        with pytest.raises(UsageError, match="applies to pattern sparsity only"):
            parse_spec(fmt, 0.5 if fmt != "2:4" else None, connectivity=0.3)
    assert parse_spec("pattern:4", connectivity=0.3).connectivity == 0.3
