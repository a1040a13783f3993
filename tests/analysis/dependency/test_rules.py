"""One tiny model per op rule: expected groups/atoms, and the oracle on random removals.

Each model puts the op between a producer conv and a consumer conv (or head), so that
channels flow through the op; the oracle then checks that physically removing any
allowed set of atoms equals zero-masking them in the original.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphprune as gp
from helpers import make_model, prune_and_check, w
from samples.make_samples import Builder

H = 8


def sandwich(middle, c_in=6, c_out=None, opset=17, out_c=5, head="conv", out_shape=None):
    """input[1,3,H,H] -> conv(3->c_in) -> middle(x) -> conv(c_out->out_c) -> output."""
    b = Builder(seed=7)
    x = b.conv("input", 3, c_in)
    y, c_out_, spatial = middle(b, x)
    if head == "conv":
        out = b.conv(y, c_out_ if c_out is None else c_out, out_c, k=1)
        shape = [1, out_c, spatial, spatial]
    else:
        out = y
        shape = out_shape
    return b.model([1, 3, H, H], out, shape, "t", opset=opset)


def groups_of(m):
    return gp.analyze(gp.load(m.SerializeToString()))


def atoms(m):
    return sorted(g.num_atoms for g in groups_of(m).prunable_groups)


def check(m, seeds=(0, 1, 2), min_groups=1):
    for s in seeds:
        prune_and_check(m, seed=s, min_groups=min_groups)


# ---- conv family ---------------------------------------------------------------------

def test_conv_plain_dilated_asymmetric():
    def mid(b, x):
        w = b.const(np.random.default_rng(0).standard_normal((8, 6, 3, 3)).astype(np.float32))
        y = b.op("Conv", [x, w], kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 1, 2, 3])
        return b.op("Relu", [y]), 8, H
    m = sandwich(mid)
    assert atoms(m) == [6, 8]
    check(m)


def test_grouped_conv_ties_positions_across_groups():
    def mid(b, x):
        return b.conv(x, 8, 8, group=2), 8, H
    m = sandwich(mid, c_in=8)
    # 8 channels in 2 groups: same position in both groups is one atom -> 4 atoms each side
    assert atoms(m) == [4, 4]
    model = gp.load(m.SerializeToString())
    dg = gp.analyze(model)
    g = dg.prunable_groups[0]
    first_slot = [s for s in g.slots if not s.virtual][0]
    assert g.labels[first_slot].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    check(m)


def test_grouped_conv_uneven_selection_is_impossible():
    """Removing channel 0 of group 0 only is not expressible: the atom also holds channel 4."""
    def mid(b, x):
        return b.conv(x, 8, 8, group=2), 8, H
    m = sandwich(mid, c_in=8)
    pruned, plan, _ = prune_and_check(m, selection={0: [0]})
    removed = {t["name"]: t["removed"] for t in plan.tensors if t["axis"] == 0}
    assert [0, 4] in removed.values()


def test_resnext_style_groups_32():
    def mid(b, x):
        return b.op("Relu", [b.conv(x, 64, 64, group=32)]), 64, H
    m = sandwich(mid, c_in=64)
    assert atoms(m) == [2, 2]
    check(m)


def test_depthwise_couples_input_and_output_and_rewrites_group():
    def mid(b, x):
        return b.op("Relu", [b.conv(x, 6, 6, group=6)]), 6, H
    m = sandwich(mid)
    assert atoms(m) == [6]
    pruned, plan, _ = prune_and_check(m, selection={0: [1, 4]})
    dw = [n for n in pruned.graph if n.op_type == "Conv" and n.attributes.get("group") is not None
          and n.attributes["group"].value > 1]
    assert dw and dw[0].attributes["group"].value == 4
    check(m)


def test_depthwise_multiplier_two():
    def mid(b, x):
        return b.conv(x, 6, 12, group=6), 12, H
    m = sandwich(mid)
    g = groups_of(m).prunable_groups[0]
    assert g.num_atoms == 6  # input channel g + output channels 2g, 2g+1
    check(m)


@pytest.mark.parametrize("group", [1, 2, 6])
def test_conv_transpose(group):
    def mid(b, x):
        w = b.const(np.random.default_rng(1).standard_normal((6, 12 // group, 2, 2)).astype(np.float32))
        bias = b.const(np.ones(12, np.float32))
        y = b.op("ConvTranspose", [x, w, bias], kernel_shape=[2, 2], strides=[2, 2], group=group)
        return b.op("Relu", [y]), 12, 2 * H
    m = sandwich(mid)
    check(m)
    if group == 6:
        assert atoms(m) == [6]


# ---- norms -----------------------------------------------------------------------------

def test_batchnorm_instancenorm():
    def mid(b, x):
        y = b.bn(x, 6)
        s = b.const(np.linspace(0.5, 1.5, 6).astype(np.float32))
        t = b.const(np.linspace(-1, 1, 6).astype(np.float32))
        y = b.op("InstanceNormalization", [y, s, t])
        return y, 6, H
    m = sandwich(mid)
    assert atoms(m) == [6]
    check(m)


def test_group_norm_removes_whole_groups():
    def mid(b, x):
        s = b.const(np.linspace(0.5, 1.5, 8).astype(np.float32))
        t = b.const(np.linspace(-1, 1, 8).astype(np.float32))
        y = b.op("GroupNormalization", [x, s, t], num_groups=4)
        return b.op("Relu", [y]), 8, H
    m = sandwich(mid, c_in=8, opset=21)
    assert atoms(m) == [4]
    pruned, plan, _ = prune_and_check(m, selection={0: [1]})
    gn = [n for n in pruned.graph if n.op_type == "GroupNormalization"][0]
    assert gn.attributes["num_groups"].value == 3
    check(m)


@pytest.mark.parametrize("before", [None, "Sigmoid"])
def test_layernorm_over_channels(before):
    """ConvNeXt's channels-last LayerNorm: a conv's output is zero at a removed channel in the
    masked original, so the channels prune exactly (statistics over the original width: the
    hidden-size rule, tests/analysis/dependency/test_hidden_width.py); after a sigmoid
    (0.5 there) they freeze."""
    def mid(b, x):
        t = b.op("Transpose", [b.op(before, [x]) if before else x], perm=[0, 2, 3, 1])
        y = b.op("LayerNormalization", [t, b.const(np.linspace(0.5, 1.5, 6).astype(np.float32)),
                                        b.const(np.linspace(-1, 1, 6).astype(np.float32))])
        return b.op("Transpose", [y], perm=[0, 3, 1, 2]), 6, H
    m = sandwich(mid)
    dg = groups_of(m)
    if before:
        assert not dg.prunable_groups
        assert any("LayerNormalization" in r for f in dg.frozen_groups for r in f.reasons)
        return
    assert [(g.num_atoms, g.normalised) for g in dg.prunable_groups] == [(6, True)]
    check(m)


def test_softmax_over_channels_freezes():
    def mid(b, x):
        return b.op("Softmax", [x], axis=1), 6, H
    dg = groups_of(sandwich(mid))
    assert not dg.prunable_groups


# ---- linear ------------------------------------------------------------------------------

@pytest.mark.parametrize("trans_b", [0, 1])
def test_flatten_gemm_head(trans_b):
    def mid(b, x):
        p = b.op("MaxPool", [x], kernel_shape=[4, 4], strides=[4, 4])  # 6x2x2
        f = b.op("Flatten", [p], axis=1)
        shape = (5, 24) if trans_b else (24, 5)
        g = b.op("Gemm", [f, b.const(np.random.default_rng(2).standard_normal(shape).astype(np.float32)),
                          b.const(np.zeros(5, np.float32))], transB=trans_b)
        return g, None, None
    m = sandwich(mid, head="none", out_shape=[1, 5])
    # each of 6 channels maps to 4 contiguous Gemm rows
    g = groups_of(m).prunable_groups[0]
    assert g.num_atoms == 6
    check(m)


def test_gemm_trans_a_and_hidden_chain():
    nodes_m = sandwich(lambda b, x: (b.op("Relu", [x]), 6, H))
    check(nodes_m)

    b = Builder(3)
    f = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv("input", 3, 6)])], axis=1)
    t = b.op("Transpose", [f], perm=[1, 0])  # [6,1]
    h = b.op("Gemm", [t, b.const(np.random.default_rng(4).standard_normal((6, 7)).astype(np.float32))], transA=1)
    h = b.op("Relu", [h])
    o = b.op("MatMul", [h, b.const(np.random.default_rng(5).standard_normal((7, 3)).astype(np.float32))])
    m = b.model([1, 3, H, H], o, [1, 3], "t")
    assert atoms(m) == [6, 7]
    check(m)


# ---- elementwise -------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
                                "Softplus", "Mish", "Elu", "Identity", "Abs", "Selu", "Celu"])
def test_unary(op):
    m = sandwich(lambda b, x: (b.op(op, [x]), 6, H), opset=18 if op == "Mish" else 17)
    assert atoms(m) == [6]
    check(m, seeds=(0,))


def test_clip_dropout_cast_swish_gelu():
    def mid(b, x):
        y = b.op("Clip", [x, b.const(np.array(0, np.float32)), b.const(np.array(6, np.float32))])
        y = b.op("Dropout", [y])
        y = b.op("Cast", [y], to=1)
        y = b.op("Mul", [y, b.op("Sigmoid", [y])])  # Swish
        y = b.op("Gelu", [y])
        return y, 6, H
    m = sandwich(mid, opset=20)
    assert atoms(m) == [6]
    check(m)


def test_squeeze_excitation_and_broadcast_constants():
    def mid(b, x):
        s = b.op("GlobalAveragePool", [x])
        s = b.op("Relu", [b.conv(s, 6, 3, k=1)])
        s = b.op("HardSigmoid", [b.conv(s, 3, 6, k=1)])
        y = b.op("Mul", [x, s])
        y = b.op("Add", [y, b.const(np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1))])
        y = b.op("Sub", [y, b.const(np.arange(6, dtype=np.float32).reshape(6, 1, 1))])
        y = b.op("Mul", [y, b.const(np.array(0.5, np.float32))])
        y = b.op("Div", [y, b.const(np.array(2.0, np.float32))])
        y = b.op("Max", [y, b.op("Neg", [y])])
        y = b.op("Min", [y, b.const(np.full((1, 6, 1, 1), 3.0, np.float32))])
        y = b.op("Pow", [y, b.const(np.array(2.0, np.float32))])
        return y, 6, H
    m = sandwich(mid)
    assert sorted(atoms(m)) == [3, 6]
    check(m)


def test_div_by_per_channel_tensor_freezes():
    def mid(b, x):
        return b.op("Div", [x, b.const(np.linspace(1, 2, 6).astype(np.float32).reshape(1, 6, 1, 1))]), 6, H
    dg = groups_of(sandwich(mid))
    assert not dg.prunable_groups
    assert any("Div" in r for f in dg.frozen_groups for r in f.reasons)


def test_where_and_prelu():
    def mid(b, x):
        cond = b.const(np.array([True, False, True, True, False, True]).reshape(1, 6, 1, 1))
        y = b.op("Where", [cond, x, b.op("Neg", [x])])
        y = b.op("PRelu", [y, b.const(np.linspace(0.1, 0.6, 6).astype(np.float32).reshape(6, 1, 1))])
        return y, 6, H
    m = sandwich(mid)
    assert atoms(m) == [6]
    check(m)


# ---- pooling, reductions, resize, pad --------------------------------------------------------

def test_pools_and_spatial_reductions():
    def mid(b, x):
        y = b.op("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        y = b.op("AveragePool", [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        y = b.op("LpPool", [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        r = b.op("ReduceMean", [y, b.const(np.array([2, 3], np.int64))], keepdims=1)
        r2 = b.op("ReduceMax", [y, b.const(np.array([-1], np.int64))], keepdims=0)  # 1x6x8
        r2 = b.op("Unsqueeze", [r2, b.const(np.array([3], np.int64))])
        r2 = b.op("GlobalMaxPool", [r2])
        return b.op("Add", [b.op("Add", [y, r]), r2]), 6, H
    m = sandwich(mid, opset=18)
    assert atoms(m) == [6]
    check(m)


@pytest.mark.parametrize("op, before, prunable", [("ReduceSum", None, True), ("ReduceMean", None, True),
                                                  ("ReduceMax", None, False), ("ReduceSum", "Sigmoid", False)])
def test_reduce_over_channels(op, before, prunable):
    """A sum over channels that are zero where masked (a conv's output) is unchanged by their
    removal, a mean is once multiplied by kept / original; a max is not (0 may be the max),
    nor a sum of sigmoids (0.5 each)."""
    def mid(b, x):
        src = b.op(before, [x]) if before else x
        r = b.op(op, [src, b.const(np.array([1], np.int64))], keepdims=1) if op == "ReduceSum" else \
            b.op(op, [src], axes=[1], keepdims=1)
        return b.op("Mul", [x, r]), 6, H
    m = sandwich(mid)
    dg = groups_of(m)
    if not prunable:
        assert not dg.prunable_groups
        return
    assert [(g.num_atoms, g.normalised) for g in dg.prunable_groups] == [(6, True)]
    check(m)


def test_resize_scales_and_sizes_then_pad():
    def mid(b, x):
        y = b.op("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
        y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
        y = b.op("Resize", [y, "", "", b.const(np.array([1, 6, 16, 16], np.int64))], mode="linear")
        y = b.op("Pad", [y, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
        y = b.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2])
        return y, 6, 8
    m = sandwich(mid)
    assert atoms(m) == [6]
    check(m)


def test_pad_on_channel_axis_freezes():
    def mid(b, x):
        return b.op("Pad", [x, b.const(np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64))]), 8, H
    dg = groups_of(sandwich(mid))
    assert not [g for g in dg.prunable_groups if any(s.value.startswith("conv") and s.axis == 1 for s in g.slots
                                                     if g.sizes[s] == 6)]
    check(sandwich(mid), min_groups=0)


# ---- data movement -------------------------------------------------------------------------

def test_concat_split_slice():
    def mid(b, x):
        z = b.conv(x, 6, 4, k=1)
        c = b.op("Concat", [x, z], axis=1)  # 10
        s1, s2 = b.op("Split", [c, b.const(np.array([3, 7], np.int64))], outputs=2, axis=1)
        s = b.op("Slice", [s2, b.const(np.array([1], np.int64)), b.const(np.array([6], np.int64)),
                          b.const(np.array([1], np.int64))])  # 5 channels
        return b.op("Concat", [s1, s, b.op("Relu", [s1])], axis=1), 11, H
    m = sandwich(mid)
    check(m, seeds=range(5))


def test_split_num_outputs_rewritten_to_sizes():
    def mid(b, x):
        a, c = b.op("Split", [x], outputs=2, axis=1, num_outputs=2)
        return b.op("Concat", [c, a], axis=1), 6, H
    m = sandwich(mid, opset=18)
    pruned, plan, _ = prune_and_check(m, selection={0: [0, 1]})
    sp = [n for n in pruned.graph if n.op_type == "Split"][0]
    assert "num_outputs" not in sp.attributes and len(sp.inputs) == 2
    check(m)


def test_reshape_transpose_squeeze():
    def mid(b, x):
        r = b.op("Reshape", [x, b.const(np.array([1, 6, H * H], np.int64))])
        t = b.op("Transpose", [r], perm=[0, 2, 1])
        t = b.op("Relu", [t])
        t = b.op("Transpose", [t], perm=[0, 2, 1])
        u = b.op("Unsqueeze", [t, b.const(np.array([0], np.int64))])
        s = b.op("Squeeze", [u, b.const(np.array([0], np.int64))])
        back = b.op("Reshape", [s, b.const(np.array([1, 6, H, H], np.int64))])
        return back, 6, H
    m = sandwich(mid)
    assert atoms(m) == [6]
    check(m)


def test_reshape_to_matmul_head():
    def mid(b, x):
        p = b.op("AveragePool", [x], kernel_shape=[4, 4], strides=[4, 4])  # 1x6x2x2
        r = b.op("Reshape", [p, b.const(np.array([1, -1], np.int64))])
        return b.op("MatMul", [r, b.const(np.random.default_rng(9).standard_normal((24, 4)).astype(np.float32))]), 4, None
    m = sandwich(mid, head="none", out_shape=[1, 4])
    assert atoms(m) == [6]
    check(m)


def test_channel_shuffle_idiom():
    def mid(b, x):
        r = b.op("Reshape", [x, b.const(np.array([1, 2, 4, H, H], np.int64))])
        t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
        return b.op("Reshape", [t, b.const(np.array([1, 8, H, H], np.int64))]), 8, H
    m = sandwich(mid, c_in=8)
    assert atoms(m) == [4]  # channel k of both halves go together
    check(m)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    def mid(b, x):
        d = b.op("DepthToSpace", [x], blocksize=2, mode=mode)  # 12 -> 3 channels, 2H
        return b.op("SpaceToDepth", [d], blocksize=2), 12, H
    m = sandwich(mid, c_in=12)
    assert atoms(m) == [3]
    check(m)


def test_gather_constant_indices():
    def mid(b, x):
        idx = b.const(np.array([5, 0, 0, 2, -1], np.int64))
        return b.op("Gather", [x, idx], axis=1), 5, H
    m = sandwich(mid)
    check(m, seeds=range(4))


def test_expand_and_tile():
    def mid(b, x):
        s = b.op("GlobalAveragePool", [x])
        e = b.op("Expand", [s, b.const(np.array([1, 6, H, H], np.int64))])
        t = b.op("Tile", [e, b.const(np.array([1, 1, 1, 1], np.int64))])
        return b.op("Add", [x, t]), 6, H
    m = sandwich(mid)
    assert atoms(m) == [6]
    check(m)


def test_tile_repeating_the_channels():
    """x.repeat(1, 2, 1, 1): channel c is channels c and c + C of the output; a removed one
    goes from both copies and the pruned input tiles the same way."""
    def mid(b, x):
        return b.op("Tile", [b.op("Relu", [x]), b.const(np.array([1, 2, 1, 1], np.int64))]), 12, H
    m = sandwich(mid)
    assert atoms(m) == [6]
    check(m)


@pytest.mark.parametrize("axis, before, expected", [(1, None, [6]), (1, "Sigmoid", []), (2, None, [6])])
def test_cumsum(axis, before, expected):
    """Running sums over a conv's channels (zero where masked: the kept sums are unchanged),
    over sigmoids (0.5 there: frozen), or over height (channels pass element by element)."""
    def mid(b, x):
        src = b.op(before, [x]) if before else x
        return b.op("CumSum", [src, b.const(np.array(axis, np.int64))]), 6, H
    m = sandwich(mid)
    assert atoms(m) == expected
    if expected:
        check(m)


# ---- fail closed ---------------------------------------------------------------------------

def test_unknown_custom_op_freezes_only_what_it_touches():
    b = Builder(11)
    x = b.op("Relu", [b.conv("input", 3, 8)])
    y = b.conv(x, 8, 8)
    c = b.op("Relu", [y])
    b.nodes.append(helper.make_node("MyOp", [c], ["custom_out"], domain="my.domain", name="mystery"))
    z = b.conv("custom_out", 8, 4, k=1)
    m = b.model([1, 3, H, H], z, [1, 4, H, H], "t", domains=["my.domain"])
    model = gp.load(m.SerializeToString())
    model.graph.node("mystery").outputs[0].shape = __import__("onnx_ir").Shape([1, 8, H, H])
    dg = gp.analyze(model)
    assert any(d.op == "my.domain::MyOp" for d in dg.diagnostics)
    assert [g.num_atoms for g in dg.prunable_groups] == [8]  # x between the first two convs
    frozen_vals = {s.value for f in dg.frozen_groups for s in f.slots}
    assert c in frozen_vals and "custom_out" in frozen_vals
    res = gp.prune(model, 0.5)
    sliced = {t["name"] for t in res.plan.tensors}
    # the conv feeding the custom op keeps its output channels
    conv2_w = [n for n in m.graph.node if n.op_type == "Conv"][1].input[1]
    assert all(not (t["name"] == conv2_w and t["axis"] == 0) for t in res.plan.tensors)
    assert sliced
    mystery = res.model.graph.node("mystery")
    assert list(mystery.inputs[0].shape) == [1, 8, H, H]


def test_grouped_conv_fed_by_concat():
    """The leading peer crashes here: a concat of two branches feeding a grouped conv."""
    def mid(b, x):
        a = b.op("Relu", [b.conv(x, 6, 4, k=1)])
        c = b.op("Relu", [b.conv(x, 6, 4, k=1)])
        cat = b.op("Concat", [a, c], axis=1)  # 8 channels, groups of 2 in a G=4 conv
        return b.conv(cat, 8, 8, group=4), 8, H
    m = sandwich(mid)
    dg = groups_of(m)
    cat_group = next(g for g in dg.prunable_groups if any(s.value.startswith("concat") for s in g.slots))
    assert cat_group.num_atoms == 2  # position 0 / position 1 of every group, across both branches
    check(m, seeds=range(4))


def _packed_qkv_attention(stack_by_gather=True):
    """torch nn.MultiheadAttention's export, by hand: x[T=5, B=2, 16] → packed q/k/v
    [.., 48] → unflatten (3, 16) → picked by Gather → (T, B·heads, head_dim) → attention →
    (T·B, 16) → out projection. 4 heads of 4."""
    from onnx import helper as oh

    from helpers import make_model, w

    def c(name, arr):
        return oh.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))

    from onnx import numpy_helper
    nodes = [
        oh.make_node("MatMul", ["x", "w_in"], ["p"]), oh.make_node("Add", ["p", "b_in"], ["qkv"]),
        c("s1", np.array([5, 2, 3, 16], np.int64)), oh.make_node("Reshape", ["qkv", "s1"], ["u"]),
        c("ax0", np.array([0], np.int64)), oh.make_node("Unsqueeze", ["u", "ax0"], ["u1"]),
        oh.make_node("Transpose", ["u1"], ["t1"], perm=[3, 1, 2, 0, 4]),
        c("ax3", np.array([3], np.int64)), oh.make_node("Squeeze", ["t1", "ax3"], ["stk"]),
        c("s2", np.array([5, 8, 4], np.int64)), c("s3", np.array([10, 16], np.int64)),
    ]
    heads = []
    for k, name in enumerate("qkv"):
        nodes += [c(f"i{k}", np.array(k, np.int64)), oh.make_node("Gather", ["stk", f"i{k}"], [f"{name}0"], axis=0),
                  oh.make_node("Reshape", [f"{name}0", "s2"], [f"{name}1"]),
                  oh.make_node("Transpose", [f"{name}1"], [f"{name}h"], perm=[1, 0, 2])]  # [8, 5, 4]
        heads.append(f"{name}h")
    nodes += [oh.make_node("Transpose", ["kh"], ["kt"], perm=[0, 2, 1]),
              oh.make_node("MatMul", ["qh", "kt"], ["sc"]), oh.make_node("Softmax", ["sc"], ["pr"], axis=-1),
              oh.make_node("MatMul", ["pr", "vh"], ["o"]),              # [8, 5, 4]
              oh.make_node("Transpose", ["o"], ["ot"], perm=[1, 0, 2]),  # [5, 8, 4]
              oh.make_node("Reshape", ["ot", "s3"], ["of"]),
              oh.make_node("MatMul", ["of", "w_out"], ["y"])]
    return make_model(nodes, [("x", [5, 2, 16])], [("y", [10, 6])],
                      {"w_in": w(16, 48, seed=1), "b_in": w(48, seed=2), "w_out": w(16, 6, seed=3)})


def test_packed_qkv_heads_with_batch_merged_into_heads():
    """The (3, E) factor is a stack unpicked by Gather, not heads: E carries the channels;
    (B, E) → (B·heads, head_dim) maps heads through the batch; atoms are whole heads, the
    same in q, k and v."""
    m = _packed_qkv_attention()
    dg = groups_of(m)
    g = next(g for g in dg.prunable_groups if any(s.value == "w_in" and s.axis == 1 for s in g.slots))
    assert g.num_atoms == 4
    labels = g.labels[next(s for s in g.slots if s.value == "w_in" and s.axis == 1)]
    assert [list(labels[p * 16: p * 16 + 16]) for p in range(3)] == [list(np.repeat(np.arange(4), 4))] * 3
    check(m)


def _conv_pow_conv(exponent):
    """conv (8 ch) -> Pow(., exponent) -> conv: exponent a constant, or 'computed' (a Sigmoid of one)."""
    from helpers import make_model, w

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"])]
    inits = {"w1": w(8, 3, 1, 1, seed=1), "b1": w(8, seed=2), "w2": w(4, 8, 1, 1, seed=3)}
    if isinstance(exponent, str):
        nodes.append(helper.make_node("Sigmoid", ["e0"], ["e"]))
        inits["e0"] = np.array(-1.0, np.float32)
    else:
        inits["e"] = np.asarray(exponent, np.float32)
    nodes += [helper.make_node("Abs", ["a"], ["aa"]), helper.make_node("Add", ["aa", "eps"], ["p0"]),
              helper.make_node("Pow", ["p0", "e"], ["p"]), helper.make_node("Conv", ["p", "w2"], ["y"])]
    inits["eps"] = np.ones((1, 8, 1, 1), np.float32)  # |a| + 1 >= 1: the input model is finite
    return make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])], inits)


@pytest.mark.parametrize("exponent,prunable", [
    (2.0, True), (0.5, True), (-2.0, False), (np.r_[[1.0] * 7, -1.0].reshape(8, 1, 1), False), ("computed", False)])
def test_pow_couples_its_base_only_under_a_constant_exponent_at_least_zero(exponent, prunable):
    """A removed channel is 0 in the masked original; 0 ** -2 is inf and the next conv's zeroed
    column made it NaN: the run was refused as 'the input model gives NaN/Inf outputs'."""
    m = _conv_pow_conv(exponent)
    assert (atoms(m) == [8]) == prunable
    if prunable:
        check(m)
    else:
        assert any("Pow" in r for f in groups_of(m).frozen_groups for r in f.reasons)


# ---- a contraction of two activations (rules.zero_channels) -------------------------------------

def _attention(feature_map: str):
    """x:[B,S,16] -> q, k (12 wide), v (10) -> feature map on q and k ("relu": relu(x), zero
    where masked; "elu1": elu(x) + 1, one where masked) -> phi(q) @ (phi(k)^T @ v) -> @ wo."""
    from helpers import make_model, w

    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q0"]), helper.make_node("Add", ["q0", "bq"], ["q"]),
             helper.make_node("MatMul", ["x", "wk"], ["k0"]), helper.make_node("Add", ["k0", "bk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"])]
    for t in ("q", "k"):
        if feature_map == "relu":
            nodes.append(helper.make_node("Relu", [t], [f"p{t}"]))
        else:
            nodes += [helper.make_node("Elu", [t], [f"{t}e"]), helper.make_node("Add", [f"{t}e", "one"], [f"p{t}"])]
    nodes += [helper.make_node("Transpose", ["pk"], ["pkt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["pkt", "v"], ["kv"]), helper.make_node("MatMul", ["pq", "kv"], ["o"]),
              helper.make_node("MatMul", ["o", "wo"], ["y"])]
    inits = {"wq": w(16, 12, seed=1), "bq": w(12, seed=2), "wk": w(16, 12, seed=3), "bk": w(12, seed=4),
             "wv": w(16, 10, seed=5), "wo": w(10, 16, seed=6), "one": np.array(1.0, np.float32)}
    return make_model(nodes, [("x", ["B", "S", 16])], [("y", ["B", "S", 16])], inits)


def test_a_contraction_of_activations_nonzero_where_masked_is_frozen():
    """elu(x) + 1 is 1 at a masked channel on both sides of phi(q) @ kv: removing the channel
    drops a nonzero term, so the q/k group is frozen (it was coupled, and the oracle failed
    the run: 'please report this model'); v's channels still prune, exactly."""
    m = _attention("elu1")
    dg = groups_of(m)
    assert [g.num_atoms for g in dg.prunable_groups] == [10]
    assert any("contracts two activations" in r for f in dg.frozen_groups for r in f.reasons)
    check(m)


def test_a_contraction_of_activations_zero_where_masked_still_prunes():
    """relu keeps a masked channel at zero: the same attention prunes q/k channels too."""
    m = _attention("relu")
    assert atoms(m) == [10, 12]
    check(m)


def _q_times_sigmoid_k(middle, inits):
    """x:[B,S,16] -> q = x·wq (8) -> `middle` (q -> qz) ; k = sigmoid(x·wk) ; y = qz @ k^T:
    q's channels are contracted with an activation that is never zero."""
    from onnx import TensorProto

    from helpers import w

    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), *middle,
             helper.make_node("MatMul", ["x", "wk"], ["k0"]), helper.make_node("Sigmoid", ["k0"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["qz", "kt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.asarray(a), k) for k, a in
                               {"wq": w(16, 8, seed=1), "wk": w(16, 8, seed=2), **inits}.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


_QDQ = [helper.make_node("QuantizeLinear", ["q", "s", "z1"], ["qq"]),
        helper.make_node("DequantizeLinear", ["qq", "s", "z2"], ["qz"])]
_BN = [helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1]),
       helper.make_node("BatchNormalization", ["qt", "g", "b", "m", "v"], ["qb"]),
       helper.make_node("Transpose", ["qb"], ["qz"], perm=[0, 2, 1])]


def _bn_params(computed_bias: bool):
    from helpers import w

    inits = {"g": w(8, seed=3), "m": w(8, seed=4), "v": np.abs(w(8, seed=5)) + 0.5}
    if computed_bias:
        return [helper.make_node("Sigmoid", ["b0"], ["b"])], {**inits, "b0": w(8, seed=6)}
    return [], {**inits, "b": w(8, seed=6)}


@pytest.mark.parametrize("case,prunable", [
    ("qdq same zero point", True), ("qdq zero points 128 and 100", False), ("quantize then cast", False),
    ("bn constant", True), ("bn computed bias", False)])
def test_zero_channels_through_quantization_and_normalization(case, prunable):
    """Q(0) is Q's zero point, DQ gives (zp_q - zp_dq)·s, and BN(0) is B - mean·γ/σ: listed as
    zero-preserving, a contraction behind them was pruned and the oracle failed ('please report
    this model'). They keep zero only with equal per-tensor zero points, or with the
    normalisation's scale and bias constants (masked with the channel)."""
    u8 = lambda v: np.array(v, np.uint8)  # noqa: E731
    if case.startswith("qdq"):
        m = _q_times_sigmoid_k(_QDQ, {"s": np.float32(0.02), "z1": u8(128), "z2": u8(128 if prunable else 100)})
    elif case == "quantize then cast":
        middle = [_QDQ[0], helper.make_node("Cast", ["qq"], ["qc"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Mul", ["qc", "s"], ["qz"])]
        m = _q_times_sigmoid_k(middle, {"s": np.float32(0.02), "z1": u8(10)})
    else:
        extra, inits = _bn_params(computed_bias=not prunable)
        m = _q_times_sigmoid_k(extra + _BN, inits)
    assert bool(atoms(m)) == prunable, case
    if prunable:
        check(m)


def test_zero_channels_of_layers_with_a_bias():
    """A masked row of A·B + C is C's row, and a conv of a zero image is its bias: zero only
    where the bias is masked with the channel (a constant per output channel)."""
    import onnx_ir as ir

    from graphprune.analysis.dependency.rules.zero_channels import keeps_zero
    from helpers import make_model, w

    nodes = [helper.make_node("Gemm", ["x", "wg", "cg"], ["g"]), helper.make_node("Sigmoid", ["bc0"], ["bc"]),
             helper.make_node("Conv", ["img", "wc", "bc"], ["c"]), helper.make_node("Conv", ["img", "wc", "bk"], ["k"])]
    m = make_model(nodes, [("x", [4, 8]), ("img", [1, 3, 5, 5])], [("g", [4, 6]), ("c", [1, 6, 3, 3]), ("k", [1, 6, 3, 3])],
                   {"wg": w(8, 6), "cg": w(6), "wc": w(6, 3, 3, 3), "bc0": w(6), "bk": w(6)})
    v = {o.name: o for n in ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(m)).graph for o in n.outputs}
    assert keeps_zero(v["g"], 1) and not keeps_zero(v["g"], 0)  # columns masked with C; rows are C's
    assert keeps_zero(v["k"], 1) and not keeps_zero(v["k"], 2)   # a constant bias; not along H
    assert not keeps_zero(v["c"], 1)                              # a computed bias is not masked


def test_a_quantized_bias_is_masked_with_its_channel():
    """A QDQ model's Gemm bias is DequantizeLinear(int32 constant): its codes are masked to the
    zero point, so 0 once dequantized. Taken for a computed bias, it froze the q/k channels
    of a quantized ViT (no loss there: those axes were frozen for another reason)."""
    i32 = lambda a: np.asarray(a, np.int32)  # noqa: E731
    middle = [helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"]),
              helper.make_node("Add", ["q", "b"], ["qz"])]
    m = _q_times_sigmoid_k(middle, {"bq": i32(np.arange(8) - 4), "bs": np.float32(0.01), "bz": i32(0)})
    assert atoms(m) == [8]
    check(m)


def test_a_resize_that_crops_the_channel_axis_does_not_couple_it():
    """tf_crop_and_resize with a roi cropping channels keeps their count (scale 1) but samples
    other channels (per the ONNX spec; ONNX Runtime ignores the roi at scale 1, so the oracle
    could not tell): it coupled them as the same channels."""
    from helpers import make_model, w

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1] * 4),
             helper.make_node("Resize", ["a", "roi", "scales"], ["r"], mode="nearest",
                              coordinate_transformation_mode="tf_crop_and_resize"),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    inits = {"w1": w(8, 3, 3, 3, seed=1), "b1": w(8, seed=2), "w2": w(4, 8, 1, 1, seed=3),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    crop = make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 12, 12])],
                      {**inits, "roi": np.array([0, 0.25, 0, 0, 1, 0.75, 1, 1], np.float32)})
    whole = make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 12, 12])],
                       {**inits, "roi": np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32)})
    assert atoms(crop) == [] and atoms(whole) == [8]


def test_reshaped_axis_maps_a_split_or_merged_axis():
    from graphprune.analysis.dependency.rules.zero_channels import reshaped_axis

    assert reshaped_axis(["B", "S", 768], ["B", "S", 12, 64], 3) == 2   # heads split off the hidden axis
    assert reshaped_axis(["B", "S", 768], ["B", "S", 12, 64], 2) == 2
    assert reshaped_axis(["B", "S", 12, 64], ["B", "S", 768], 2) is None  # one axis made of two: unknown
    assert reshaped_axis([None, 8, 4], ["N", 8, 2, 2], 3) == 2           # counted from the end
    assert reshaped_axis(["B", 64, "H", "W"], ["B", 64, None], 1) == 1    # counted from the start
    assert reshaped_axis(["B", 64, "H", "W"], ["B", 8, 8, None], 2) == 1    # the inner part of the split channels


def test_merged_axes_names_the_axes_a_reshape_merges():
    from graphprune.analysis.dependency.rules.zero_channels import merged_axes

    assert merged_axes(["B", "S", 12, 64], ["B", "S", 768], 2) == [2, 3]  # heads x head dims -> hidden
    assert merged_axes([2, 16, 4, 16], [None, None, 64], 2) == [2, 3]    # counted from the end
    assert merged_axes(["B", 8, 4, 4], ["B", 128], 1) == [1, 2, 3]        # a flatten
    assert merged_axes(["B", "S", 768], ["B", "S", 12, 64], 2) is None    # a split, not a merge
    assert merged_axes(["B", "S", 12, 64], ["B", 32, 384], 1) is None     # elements regrouped


def test_zero_channels_through_the_merge_of_heads():
    """An attention context merged from [B, S, heads, dims] to [B, S, hidden] is zero at a
    removed channel when both merged axes are (the heads come from masked V columns): the
    output projection's DynamicQuantizeLinear of a dynamically quantized BERT needs it."""
    import onnx_ir as ir

    from graphprune.analysis.dependency.rules.zero_channels import keeps_zero
    from helpers import make_model, w

    nodes = [helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("Reshape", ["v", "split"], ["vh"]),
             helper.make_node("Reshape", ["vh", "merge"], ["ctx"]),
             helper.make_node("Sigmoid", ["vh"], ["sh"]),
             helper.make_node("Reshape", ["sh", "merge"], ["sctx"])]
    m = make_model(nodes, [("x", [2, 5, 8])], [("ctx", [2, 5, 8]), ("sctx", [2, 5, 8])],
                   {"wv": w(8, 8), "split": np.array([2, 5, 2, 4]), "merge": np.array([2, 5, 8])})
    v = {o.name: o for n in ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(m)).graph for o in n.outputs}
    assert keeps_zero(v["ctx"], 2)
    assert not keeps_zero(v["sctx"], 2)  # sigmoid(0) = 0.5 at a removed head
    assert not keeps_zero(v["ctx"], 1)   # the sequence axis comes from no weight


def test_zero_channels_of_an_integer_matmul_are_its_weight_columns():
    """MatMulInteger's output columns are zero where the weight's columns are masked to their
    zero point; a 1-D weight has no columns (the last axis is then the left operand's rows,
    codes of whatever the input was): claimed zero there, a dynamically quantized range
    passed removed rows that were not zero."""
    import onnx_ir as ir
    from onnx import TensorProto

    from graphprune.analysis.dependency.rules.zero_channels import keeps_zero
    from helpers import make_model

    nodes = [helper.make_node("MatMulInteger", ["a", "w2d"], ["m2"]), helper.make_node("MatMulInteger", ["at", "w1d"], ["m1"])]
    u8 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.UINT8, shape)  # noqa: E731
    i32 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.INT32, shape)  # noqa: E731
    m = make_model(nodes, [u8("a", [3, 6]), u8("at", [5, 6])], [i32("m2", [3, 5]), i32("m1", [5])],
                   {"w2d": np.ones((6, 5), np.int8), "w1d": np.ones(6, np.int8)})
    v = {o.name: o for n in ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(m)).graph for o in n.outputs}
    assert keeps_zero(v["m2"], 1) and not keeps_zero(v["m2"], 0)
    assert not keeps_zero(v["m1"], 0)


def test_zero_channels_through_a_reduction_that_drops_axes():
    """x.mean((2, 3)) exports as ReduceMean keepdims=0: the output's channel axis is the
    input's axis 1 (unreduced), zero where the conv's masked channels are. It was given up on,
    and a dynamically quantized CNN lost the group before its classifier."""
    import onnx_ir as ir

    from graphprune.analysis.dependency.rules.zero_channels import keeps_zero
    from helpers import make_model, w

    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"]),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["c"], ["k"], axes=[1], keepdims=0)]
    m = make_model(nodes, [("x", [2, 3, 5, 5])], [("m", [2, 6]), ("k", [2, 3, 3])], {"wc": w(6, 3, 3, 3)}, opset=17)
    v = {o.name: o for n in ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(m)).graph for o in n.outputs}
    assert keeps_zero(v["m"], 1) and not keeps_zero(v["m"], 0)
    assert not keeps_zero(v["k"], 1)  # the channel axis reduced away: H is what is left there


def test_zero_channels_follow_a_gather_that_picks_q_k_v_from_a_packed_stack():
    """torch's MultiheadAttention export picks q, k and v from a [3, T, B, E] stack with a
    scalar Gather: the output's channel axis is the data's next axis. Taken for an unknown
    axis, q @ k^T froze the head positions, and prune_module kept nn.MultiheadAttention."""
    import onnx
    import onnx_ir as ir

    from graphprune.analysis.dependency.rules.zero_channels import keeps_zero

    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(_packed_qkv_attention()))
    values = {o.name: o for n in model.graph for o in n.outputs}
    assert keeps_zero(values["q0"], 2) and keeps_zero(values["qh"], 2)  # [T, B, E] from stk[3, T, B, E]
    assert not keeps_zero(values["q0"], 0)   # the sequence axis: not a channel of the weight
    assert not keeps_zero(values["pr"], 2)   # softmax is never zero


@pytest.mark.parametrize("make", ["Identity", "Cast"])
def test_a_conv_weight_reached_through_an_op_keeps_its_kernel_axes(make):
    """fp16 weights cast to float, or an optimiser's Identity, before a Conv: the kernel's
    height and width were coupled to the constant behind the op and became prunable
    'channels' (a 2x2 kernel written, output 34x34 instead of 32x32). They are frozen."""
    from onnx import TensorProto

    from helpers import make_model, w

    w1, w2 = w(8, 3, 3, 3, seed=1), w(4, 8, 3, 3, seed=2)
    attrs = {"to": TensorProto.FLOAT} if make == "Cast" else {}
    if make == "Cast":
        w1, w2 = w1.astype(np.float16), w2.astype(np.float16)
    nodes = [helper.make_node(make, ["w1r"], ["w1"], **attrs),
             helper.make_node("Conv", ["x", "w1", "b1"], ["a0"], pads=[1] * 4), helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node(make, ["w2r"], ["w2"], **attrs),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], pads=[1] * 4)]
    m = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", ["N", 4, "H", "W"])],
                   {"w1r": w1, "b1": w(8, seed=3), "w2r": w2, "b2": w(4, seed=4)})
    dg = groups_of(m)
    assert [g.num_atoms for g in dg.prunable_groups] == [8]
    assert sum("kernel axis" in r for f in dg.frozen_groups for r in f.reasons) == 4
    check(m)


def test_a_reason_about_unknown_shapes_names_the_node_where_they_were_lost():
    """An op shape inference cannot follow (a custom one) leaves every value after it without
    a shape; the MatMul two nodes later was frozen 'with unknown ranks', naming only itself."""
    from onnx import TensorProto, numpy_helper

    from helpers import w

    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="first"),
             helper.make_node("Foo", ["a"], ["b"], name="lost_here", domain="com.example"),
             helper.make_node("Relu", ["b"], ["c"], name="relu"),
             helper.make_node("MatMul", ["c", "w1"], ["y"], name="late")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w(8, 8, seed=1), "w0"),
                               numpy_helper.from_array(w(8, 4, seed=2), "w1")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    reasons = [r for f in groups_of(m).frozen_groups for r in f.reasons if "unknown ranks" in r]
    assert reasons and all("shapes unknown from lost_here (Foo) on" in r for r in reasons), reasons


@pytest.mark.parametrize("added,prunable", [(0.0, True), (0.5, False)])
def test_a_scalar_added_keeps_zeros_only_when_it_is_zero(added, prunable):
    """`x + 0.0` (an exporter's no-op) keeps a masked channel at zero, so a contraction behind
    it prunes (it froze: a broadcast constant was never followed); `x + 0.5` does not."""
    m = _q_times_sigmoid_k([helper.make_node("Add", ["q", "c"], ["qz"])], {"c": np.float32(added)})
    assert bool(atoms(m)) == prunable
    if prunable:
        check(m)


def test_a_depthwise_conv_after_a_replaced_mean_shrinks_its_group():
    """A ReduceMean over a pruned axis keeps its mean over the original width by a rewrite
    that puts a new value in its output's place; the depthwise conv reading it looked its
    removed channels up on the old value, kept group=6 and the pruned model failed the IR
    check (adversarial probe). A replaced value answers for the slots it was analysed under."""
    inits = {"wc": w(6, 4, 1, seed=1), "wm": w(8, 12, seed=2), "wd": w(6, 1, 1, seed=3), "wf": w(6, 5, seed=4),
             "ax": np.array([2], np.int64), "shp": np.array([0, 6], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"]), helper.make_node("MatMul", ["c", "wm"], ["h"]),
             helper.make_node("Relu", ["h"], ["hr"]), helper.make_node("ReduceMean", ["hr", "ax"], ["m"], keepdims=1),
             helper.make_node("Conv", ["m", "wd"], ["d"], group=6), helper.make_node("Reshape", ["d", "shp"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["y"])]
    m = make_model(nodes, [("x", ["b", 4, 8])], [("y", ["b", 5])], inits, opset=18)
    dg = gp.analyze(gp.load(m.SerializeToString()))
    selection = {g.id: list(range(0, g.num_atoms, 2)) for g in dg.prunable_groups}
    pruned, _, _ = prune_and_check(m, selection=selection, min_groups=2)
    depthwise = [n for n in pruned.graph if n.op_type == "Conv"][-1]
    assert depthwise.attributes["group"].value == 3
