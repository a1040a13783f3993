"""graphprune.ir.nbits: MatMulNBits' layout, code packing and dequantized weight, checked
against what ONNX Runtime computes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphprune as gp
from graphprune.ir import nbits

RNG = np.random.default_rng(0)


def nbits_model(K=40, N=6, bits=4, bs=16, zp="packed", flat_scales=False, bias=False, g_idx=False):
    """One MatMulNBits of random codes (K need not be a multiple of the block size)."""
    kb = -(-K // bs)
    per = 8 // bits
    codes = RNG.integers(0, 1 << bits, (N, kb, bs)).astype(np.uint8)
    inits = {"w": nbits.pack(codes, bits), "s": RNG.uniform(0.05, 0.2, (N, kb)).astype(np.float32)}
    if flat_scales:
        inits["s"] = inits["s"].reshape(-1)
    names = ["x", "w", "s"]
    if zp == "packed":
        inits["z"] = nbits.pack(RNG.integers(0, 1 << bits, (N, kb)).astype(np.uint8), bits)
        assert inits["z"].shape == (N, -(-kb // per))
    elif zp == "flat":
        inits["z"] = nbits.pack(RNG.integers(0, 1 << bits, (N, kb)).astype(np.uint8), bits).reshape(-1)
    elif zp == "float":
        inits["z"] = RNG.uniform(0, (1 << bits) - 1, inits["s"].shape).astype(np.float32)
    names.append("z" if zp != "none" else "")
    if g_idx:
        inits["g"] = (np.arange(K) // bs).astype(np.int32)
    names.append("g" if g_idx else "")
    if bias:
        inits["b"] = RNG.standard_normal(N).astype(np.float32)
    names.append("b" if bias else "")
    while names[-1] == "":
        names.pop()
    node = helper.make_node("MatMulNBits", names, ["y"], name="mm", domain="com.microsoft", K=K, N=N, bits=bits,
                            block_size=bs)
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
                          [onnx.numpy_helper.from_array(a, k) for k, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 9
    return m


def _ort_weight(proto, K):
    """W [N, K] as ONNX Runtime multiplies it: the output for the identity input."""
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.eye(K, dtype=np.float32)})[0]
    return y.T


def _node(proto):
    return next(iter(gp.load(proto.SerializeToString(), fold=False).graph))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_and_unpack_are_inverse(bits):
    codes = RNG.integers(0, 1 << bits, (3, 5, 13)).astype(np.uint8)
    packed = nbits.pack(codes, bits)
    assert packed.shape == (3, 5, -(-13 * bits // 8)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(nbits.unpack(packed, bits, 13), codes)


@pytest.mark.parametrize("zp", ["packed", "float", "none", "flat"])
@pytest.mark.parametrize("flat_scales", [False, True])
def test_dequantized_is_what_onnx_runtime_multiplies(zp, flat_scales):
    if zp == "float" and flat_scales:
        pytest.skip("float zero points take the scales' shape; covered by the 2-D case")
    K = 40
    proto = nbits_model(K=K, zp=zp, flat_scales=flat_scales)
    w = nbits.dequantized(_node(proto))
    assert w.shape == (6, 3, 16)
    flat = w.reshape(6, -1)
    np.testing.assert_allclose(flat[:, :K], _ort_weight(proto, K), rtol=1e-6, atol=1e-6)
    assert not flat[:, K:].any()  # the last block's padding is never multiplied


def test_dequantized_eight_bits_matches_onnx_runtime():
    proto = nbits_model(K=32, bits=8, bs=16)
    np.testing.assert_allclose(nbits.dequantized(_node(proto)).reshape(6, -1), _ort_weight(proto, 32), rtol=1e-6,
                               atol=1e-6)


def test_layout_reads_the_forms_and_says_why_not():
    lay, _ = nbits.layout(_node(nbits_model(K=40, zp="packed")))
    assert (lay.K, lay.N, lay.bits, lay.block_size, lay.k_blocks, lay.zero_points) == (40, 6, 4, 16, 3, "packed")
    assert nbits.layout(_node(nbits_model(zp="flat", flat_scales=True)))[0].flat_zero_points
    lay, why = nbits.layout(_node(nbits_model(g_idx=True)))
    assert lay is None and "g_idx" in why


def test_kept_zero_points_drop_rows_and_blocks():
    proto = nbits_model(K=40, zp="packed")
    node = _node(proto)
    lay, _ = nbits.layout(node)
    before = nbits.zero_points(node, lay)
    packed = onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "z"))
    kept = nbits.kept_zero_points(packed, lay, np.array([1, 4]), np.array([1]))
    assert kept.shape == (4, 1)
    np.testing.assert_array_equal(nbits.unpack(kept, 4, 2), before[[0, 2, 3, 5]][:, [0, 2]])


def test_logical_params_count_codes_not_bytes():
    m = gp.load(nbits_model(K=40, N=6, bits=4, bs=16).SerializeToString(), fold=False)
    assert nbits.logical_params(m.graph.initializers["w"]) == 6 * 3 * 16
    assert nbits.logical_params(m.graph.initializers["s"]) is None
    from graphprune.analysis.cost import model_cost

    assert model_cost(m).params == 6 * 3 * 16 + 6 * 3  # the codes and the scales
