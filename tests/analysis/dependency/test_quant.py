"""Channel rules of QuantizeLinear / DequantizeLinear (QDQ models), on hand-built models:
per-axis weight scales and zero points (with nonzero zero points, on either weight axis)
prune under the oracle; what the rules do not understand is frozen with its reason."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphprune as gp
from helpers import make_model, prune_and_check

RNG = np.random.default_rng(3)


def _qweight(prefix, shape, axis, per_axis=True, dtype=np.int8):
    """Integer weight + scale + nonzero zero point, and the DequantizeLinear reading them."""
    lo, hi = (-100, 100) if dtype == np.int8 else (20, 230)
    n = shape[axis] if per_axis else 1
    inits = {f"{prefix}_q": RNG.integers(lo, hi, shape).astype(dtype),
             f"{prefix}_s": (0.01 + 0.02 * RNG.random(n)).astype(np.float32).reshape((n,) if per_axis else ()),
             f"{prefix}_z": RNG.integers(-5 if dtype == np.int8 else 120, 6 if dtype == np.int8 else 136,
                                         n).astype(dtype).reshape((n,) if per_axis else ())}
    attrs = {"axis": axis} if per_axis else {}
    node = helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_s", f"{prefix}_z"], [f"{prefix}_w"],
                            name=f"{prefix}_dq", **attrs)
    return inits, node


def _act_qdq(x, name, scale=0.05, zp=128):
    inits = {f"{name}_as": np.array(scale, np.float32), f"{name}_az": np.array(zp, np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", [x, f"{name}_as", f"{name}_az"], [f"{name}_aq"], name=f"{name}_q"),
             helper.make_node("DequantizeLinear", [f"{name}_aq", f"{name}_as", f"{name}_az"], [f"{name}_ad"],
                              name=f"{name}_dq")]
    return inits, nodes, f"{name}_ad"


def qdq_sandwich(w2_axis=0, w1_per_axis=True, w2_per_axis=True, dtype=np.int8, middle=None, opset=17):
    """x -> Q/DQ -> Conv(DQ w1: 3->6) -> Relu -> Q/DQ [-> middle] -> Conv(DQ w2: 6->4, axis w2_axis) -> y."""
    i1, dq1 = _qweight("w1", (6, 3, 3, 3), 0, w1_per_axis, dtype)
    i2, dq2 = _qweight("w2", (4, 6, 1, 1), w2_axis, w2_per_axis, dtype)
    ia, na, xa = _act_qdq("x", "in")
    ir_, nr, r = _act_qdq("r", "mid")
    nodes = [dq1, dq2, *na,
             helper.make_node("Conv", [xa, "w1_w", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), *nr]
    inits = {**i1, **i2, **ia, **ir_, "b1": RNG.standard_normal(6).astype(np.float32)}
    if middle is not None:
        extra_nodes, extra_inits, r = middle(r)
        nodes += extra_nodes
        inits.update(extra_inits)
    nodes.append(helper.make_node("Conv", [r, "w2_w"], ["y"], name="conv2"))
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])], inits, opset=opset)


def _analyze(m):
    return gp.analyze(gp.load(m.SerializeToString()))


def _frozen_reasons(dg) -> str:
    return " | ".join(r for fg in dg.frozen_groups for r in fg.reasons) + " | " + \
        " | ".join(d.message for d in dg.diagnostics)


@pytest.mark.parametrize("w2_axis", [0, 1], ids=["w2-per-output-channel", "w2-per-input-channel"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_per_axis_weights_prune_exactly(w2_axis, dtype):
    """The 6 channels between the convs: w1 loses output channels with its scales and zero
    points; w2 loses input channels, whether its own quantization axis is that one (scales
    sliced with it) or the output one (scales kept)."""
    m = qdq_sandwich(w2_axis=w2_axis, dtype=dtype)
    dg = _analyze(m)
    g = next(g for g in dg.prunable_groups if g.num_atoms == 6)
    consts = {str(s) for s in g.slots if s in g.roles}
    assert {"w1_q[0]", "w1_s[0]", "w1_z[0]", "w2_q[1]", "b1[0]"} <= consts
    assert ("w2_s[0]" in consts) == (w2_axis == 1)
    for seed in (0, 1, 2):
        pruned, plan, _ = prune_and_check(m, seed=seed)
        sizes = {v.name: v.const_value.numpy().shape for v in pruned.graph.initializers.values()}
        assert sizes["w1_q"][0] == sizes["w1_s"][0] == sizes["w1_z"][0] < 6
        assert sizes["w2_q"][1] == sizes["w1_q"][0]
        assert sizes["w2_s"] == (sizes["w2_q"][1] if w2_axis == 1 else 4,)


def test_per_tensor_weights_keep_their_scale():
    m = qdq_sandwich(w1_per_axis=False, w2_per_axis=False, dtype=np.uint8)
    pruned, plan, _ = prune_and_check(m, seed=0)
    names = {t["name"] for t in plan.tensors}
    assert {"w1_q", "w2_q"} <= names and not names & {"w1_s", "w1_z", "w2_s", "w2_z"}
    sizes = {v.name: v.const_value.numpy().shape for v in pruned.graph.initializers.values()}
    assert sizes["w1_s"] == () and sizes["w1_q"][0] < 6


def _frozen_between_convs(m, reason):
    dg = _analyze(m)
    assert not any(g.num_atoms == 6 for g in dg.prunable_groups)
    assert reason in _frozen_reasons(dg)


def test_per_channel_activation_quantization_is_frozen():
    def mid(r):
        s = (0.01 + 0.01 * RNG.random(6)).astype(np.float32)
        z = np.full(6, 128, np.uint8)
        return ([helper.make_node("QuantizeLinear", [r, "pc_s", "pc_z"], ["pc_q"], name="pc_q", axis=1),
                 helper.make_node("DequantizeLinear", ["pc_q", "pc_s", "pc_z"], ["pc_d"], name="pc_dq", axis=1)],
                {"pc_s": s, "pc_z": z}, "pc_d")
    _frozen_between_convs(qdq_sandwich(middle=mid), "per-axis quantization of activations is not supported")


def test_per_axis_dequantize_of_a_computed_tensor_is_frozen():
    def mid(r):
        return ([helper.make_node("QuantizeLinear", [r, "t_s", "t_z"], ["t_q"], name="t_q"),
                 helper.make_node("DequantizeLinear", ["t_q", "pc_s", "pc_z"], ["t_d"], name="t_dq", axis=1)],
                {"t_s": np.array(0.02, np.float32), "t_z": np.array(128, np.uint8),
                 "pc_s": np.full(6, 0.02, np.float32), "pc_z": np.full(6, 128, np.uint8)}, "t_d")
    _frozen_between_convs(qdq_sandwich(middle=mid), "per-channel activation quantization")


def test_blocked_quantization_is_frozen():
    i1 = {"w1_q": RNG.integers(-100, 100, (6, 3, 3, 3)).astype(np.int8),
          "w1_s": np.full((6, 3, 3, 3), 0.01, np.float32)[:, :1].copy()}  # block of 3 input channels
    nodes = [helper.make_node("DequantizeLinear", ["w1_q", "w1_s"], ["w1_w"], name="w1_dq", axis=1, block_size=3),
             helper.make_node("Conv", ["x", "w1_w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    m = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])],
                   {**i1, "w2": RNG.standard_normal((4, 6, 1, 1)).astype(np.float32)}, opset=21)
    _frozen_between_convs(m, "blocked quantization")


def test_quantize_of_a_constant_and_shared_quantized_weights_are_frozen():
    def const_q(r):
        return ([helper.make_node("QuantizeLinear", ["fw", "t_s", "t_z"], ["fw_q"], name="fw_q"),
                 helper.make_node("DequantizeLinear", ["fw_q", "t_s", "t_z"], ["fw_d"], name="fw_dq"),
                 helper.make_node("Mul", [r, "fw_d"], ["mm"], name="mul")],
                {"fw": RNG.standard_normal((1, 6, 1, 1)).astype(np.float32),
                 "t_s": np.array(0.02, np.float32), "t_z": np.array(0, np.int8)}, "mm")
    _frozen_between_convs(qdq_sandwich(middle=const_q), "QuantizeLinear of a constant")

    m = qdq_sandwich()
    m.graph.node.append(helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1_again"], name="again",
                                         axis=0))
    m.graph.node.append(helper.make_node("ReduceSum", ["w1_again"], ["w1_sum"], name="sum", keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("w1_sum", onnx.TensorProto.FLOAT, []))
    _frozen_between_convs(m, "is also read elsewhere")
