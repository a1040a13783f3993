"""Sparse conv kernels (kernels/conv.py): structure detection and numerics vs ONNX Runtime.

Each candidate is compiled alone and run on numpy inputs; the reference is ORT running an
ONNX Conv with the same zero-containing weight.
"""
from __future__ import annotations

import numpy as np
import pytest

from graphprune.backends.tvm import adapter
from graphprune.backends.tvm.kernels import conv_structure as cs

pytestmark = pytest.mark.skipif(not adapter.available()[0], reason="TVM not installed")

PATTERNS = [(1, 3, 4, 5), (0, 1, 4, 7), (3, 4, 5, 8), (1, 4, 6, 7), (0, 4, 5, 8), (2, 4, 3, 6)]


def pattern_weight(rng, o, i, conn=0.3, patterns=PATTERNS):
    """Every 3x3 kernel keeps one 4-tap pattern; `conn` of the kernels are all zero."""
    w = rng.standard_normal((o, i, 9)).astype(np.float32)
    pid = rng.integers(0, len(patterns), (o, i))
    mask = np.zeros((o, i, 9), bool)
    for p, taps in enumerate(patterns):
        mask[..., list(taps)] |= (pid == p)[..., None]
    mask &= (rng.random((o, i)) >= conn)[..., None]
    return (w * mask).reshape(o, i, 3, 3)


def block_weight(rng, o, i, k, r, c, density=0.25):
    nob, nib = -(-o // r), -(-i // c)
    keep = rng.random((nob, nib)) < density
    keep[0, 0] = True
    mask = np.kron(keep, np.ones((r, c), bool))[:o, :i]
    return rng.standard_normal((o, i, k, k)).astype(np.float32) * mask[:, :, None, None]


def ort_conv(x, w, b, strides, pads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []), ["y"],
                            strides=list(strides), pads=list(pads),
                            kernel_shape=list(w.shape[2:]))
    g = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def check_all(cands, x, w, b, strides, pads, relu=False):
    from graphprune.backends.tvm.kernels import conv

    ref = ort_conv(x, w, b, strides, pads)
    if relu:
        ref = np.maximum(ref, 0)
    assert cands
    for cand in cands:
        assert tuple(cand.out_shape) == ref.shape, cand.name
        got = conv.build_candidate(cand)(x)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=cand.name)


def candidates(w, b, x_shape, stride, pads, **kw):
    from graphprune.backends.tvm.kernels import conv

    return conv.conv_candidates(w, b, x_shape, (stride, stride), tuple(pads), (1, 1), 1, **kw)


# ---------------------------------------------------------------------- structure (numpy)
def test_pattern_library_from_zeros():
    rng = np.random.default_rng(0)
    w = pattern_weight(rng, 8, 6)
    codes, pid = cs.pattern_library(w)
    assert len(codes) <= len(PATTERNS) and all(bin(cd).count("1") == 4 for cd in codes)
    assert ((pid >= 0) == (w != 0).reshape(8, 6, 9).any(axis=2)).all()
    # a stray exact zero inside a pattern is computed with its superset pattern
    w2 = w.copy()
    o, i = np.argwhere(pid >= 0)[0]
    dy, dx = cs.taps_of(codes[pid[o, i]], 3, 9)[0]
    w2[o, i, dy, dx] = 0
    codes2, pid2 = cs.pattern_library(w2)
    assert len(codes2) == len(codes) and pid2[o, i] >= 0
    # random unstructured zeros: too many masks for a pattern library
    w3 = rng.standard_normal((16, 16, 3, 3)) * (rng.random((16, 16, 3, 3)) < 0.5)
    assert cs.pattern_library(w3, max_patterns=12) is None


def test_pack_roundtrip_reconstructs_weight():
    rng = np.random.default_rng(1)
    w = block_weight(rng, 10, 7, 3, 4, 2, density=0.4)
    bm = cs.block_mask(w, 4, 2)
    taps = tuple((dy, dx) for dy in range(3) for dx in range(3))
    p = cs.pack(w, 4, 2, [taps], np.where(bm, 0, -1))
    rebuilt = np.zeros((12, 8, 3, 3), np.float32)
    for ob in range(p.n_out_blocks):
        for j in range(p.ptr[ob], p.ptr[ob + 1]):
            for t, (dy, dx) in enumerate(taps):
                rebuilt[ob * 4:(ob + 1) * 4, p.idx[j] * 2:(p.idx[j] + 1) * 2, dy, dx] = p.vals[j, :, t, :].T
    np.testing.assert_array_equal(rebuilt[:10, :7], w)
    order = cs.balanced_order(np.array([9, 1, 1, 1, 5, 3]), 2)
    assert sorted(order) == list(range(6))


def test_dense_and_grouped_give_no_candidate():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    assert candidates(w, None, (1, 4, 8, 8), 1, (1, 1, 1, 1)) == []
    from graphprune.backends.tvm.kernels import conv

    wp = pattern_weight(rng, 8, 2)
    assert conv.conv_candidates(wp, None, (1, 4, 8, 8), (1, 1), (1, 1, 1, 1), (1, 1), 2) == []
    # unstructured 50% zeros: neither patterns nor blocks
    wu = w * (rng.random(w.shape) < 0.5)
    assert candidates(wu, None, (1, 4, 8, 8), 1, (1, 1, 1, 1)) == []


# ---------------------------------------------------------------------- numerics vs ORT
@pytest.mark.parametrize("stride,batch,bias,hw", [
    (1, 1, True, (9, 13)),
    (2, 2, False, (11, 8)),
    (2, 1, True, (12, 12)),
])
def test_pattern_kernel_matches_ort(stride, batch, bias, hw):
    rng = np.random.default_rng(stride * 10 + batch)
    o, i = 11, 7
    w = pattern_weight(rng, o, i)
    w[3] = 0  # an all-zero output channel: bias only
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    x = rng.standard_normal((batch, i) + hw).astype(np.float32)
    cands = candidates(w, b, x.shape, stride, (1, 1, 1, 1))
    assert cands and all(c.info["structure"] == "pattern" for c in cands if c.name.startswith("pattern"))
    assert any(c.name.startswith("pattern4") for c in cands)
    check_all(cands, x, w, b, (stride, stride), (1, 1, 1, 1))


@pytest.mark.parametrize("o,i,k,r,c,stride,batch,bias,pads", [
    (20, 6, 3, 8, 1, 1, 1, True, (1, 1, 1, 1)),   # ragged output blocks
    (12, 10, 3, 4, 4, 2, 2, False, (1, 1, 1, 1)),  # ragged input blocks, stride 2, batch 2
    (24, 16, 1, 8, 1, 1, 1, True, (0, 0, 0, 0)),   # 1x1 conv = BSR GEMM
    (16, 9, 1, 4, 1, 2, 1, False, (0, 0, 0, 0)),   # 1x1 stride-2 projection shortcut
    (8, 5, 3, 4, 1, 1, 1, True, (0, 1, 2, 1)),     # asymmetric padding
])
def test_block_kernel_matches_ort(o, i, k, r, c, stride, batch, bias, pads):
    rng = np.random.default_rng(o + i + k)
    w = block_weight(rng, o, i, k, r, c)
    w[-1] = 0
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    x = rng.standard_normal((batch, i, 10, 7)).astype(np.float32)
    from graphprune.backends.tvm.kernels import conv

    cands = conv.block_candidates(w, b, x.shape, (stride, stride), pads, (1, 1), "float32")
    assert cands and all(c.info["structure"] == "block" for c in cands)
    check_all(cands, x, w, b, (stride, stride), pads)


def test_fused_relu_and_all_zero_weight():
    rng = np.random.default_rng(5)
    w = pattern_weight(rng, 6, 4)
    b = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((1, 4, 6, 9)).astype(np.float32)
    check_all(candidates(w, b, x.shape, 1, (1, 1, 1, 1), relu=True)[:1], x, w, b, (1, 1),
              (1, 1, 1, 1), relu=True)
    z = np.zeros_like(w)
    cands = candidates(z, b, x.shape, 1, (1, 1, 1, 1))
    check_all(cands[:1], x, z, b, (1, 1), (1, 1, 1, 1))


@pytest.mark.parametrize("relu", [False, True])
def test_input_channel_chunks_match_ort(monkeypatch, relu):
    """A tiny L1 budget forces several input-channel chunks (partial sums carried over)."""
    from graphprune.backends.tvm.kernels import conv

    monkeypatch.setattr(conv, "L1_BYTES", 512)
    rng = np.random.default_rng(7)
    w = pattern_weight(rng, 9, 13)
    b = rng.standard_normal(9).astype(np.float32)
    x = rng.standard_normal((2, 13, 8, 10)).astype(np.float32)
    cands = candidates(w, b, x.shape, 1, (1, 1, 1, 1), relu=relu)
    assert any(c.info["chunks"] > 1 for c in cands)
    check_all(cands, x, w, b, (1, 1), (1, 1, 1, 1), relu=relu)
    wb = block_weight(rng, 16, 12, 3, 4, 2)
    cands = conv.block_candidates(wb, b[:1].repeat(16), x[:, :12].shape, (2, 2), (1, 1, 1, 1), (1, 1),
                                  relu=relu)
    assert cands and cands[0].info["chunks"] > 1
    check_all(cands, np.ascontiguousarray(x[:, :12]), wb, b[:1].repeat(16), (2, 2), (1, 1, 1, 1), relu=relu)


def test_conv_rewrite_end_to_end_matches_ort(tmp_path):
    """conv+bias(+relu) chains of an imported model become sparse kernels; the compiled
    model matches ORT (dense convs, residual add, unsupported grouping left alone)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from graphprune.backends.tvm.kernels import rewrite

    rng = np.random.default_rng(11)
    w1 = pattern_weight(rng, 8, 4)
    w2 = block_weight(rng, 8, 8, 1, 4, 1, density=0.3)
    w3 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)  # dense: stays a conv2d
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (w2, "w2"), (w3, "w3"), (rng.standard_normal(8).astype(np.float32), "b1"),
              (rng.standard_normal(8).astype(np.float32), "b2"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             helper.make_node("Conv", ["r1", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "c3"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 11])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 9, 11])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    mod = adapter.import_onnx(path)
    # injected timings: every sparse candidate beats dense, so the first candidate is taken
    new, table, _ = rewrite.rewrite_sparse(mod, measure=lambda kind, layer, m: 1.0 if kind == "dense" else 0.5)
    replaced = [r for r in table if r["chosen"] != "dense"]
    assert len(table) == 2 and len(replaced) == 2   # the dense conv is not even a candidate layer
    assert [r["fused"] for r in replaced] == [["bias", "relu"], ["bias"]]
    assert {c for r in replaced for c in r["candidates"]} >= {r["chosen"] for r in replaced}
    lib = tmp_path / "m.so"
    adapter.export(adapter.build(new, adapter.host_target()), lib)
    x = rng.standard_normal((1, 4, 9, 11)).astype(np.float32)
    got = adapter.load_and_run(lib, [x])[0]
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
