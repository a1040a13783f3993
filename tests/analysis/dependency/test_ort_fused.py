"""ONNX Runtime's fused transformer ops (rules/ort_fused.py, shapes in
frontends/contrib_shapes.py): an optimized BERT/GPT-2 block
(MatMul -> BiasGelu/FastGelu -> MatMul -> SkipLayerNormalization) keeps its FFN channels
prunable, its MACs counted, and the oracle holds; the hidden size they normalise stays whole."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import graphprune as gp
from graphprune.analysis.cost import model_cost
from helpers import make_model, prune_and_check, w

MS = "com.microsoft"
H = 16
FFN = {"ffn1": 32, "ffn2": 24, "ffn3": 20}
OUT = 8


def _fused_block(batch="b", seq="s", rms_out: bool = False) -> onnx.ModelProto:
    """x -> [MatMul, BiasGelu, MatMul] -> SkipLayerNorm(+x) -> [MatMul, FastGelu(bias),
    MatMul] -> SkipSimplifiedLayerNorm(+residual sum) -> [MatMul, QuickGelu, MatMul, Gelu]
    (-> SimplifiedLayerNormalization, ORT's RMSNorm in the default domain, which
    onnx.checker does not know: `rms_out`)."""
    f1, f2, f3 = FFN.values()
    inits = {
        "w1": w(H, f1, seed=1), "b1": w(f1, seed=2), "w2": w(f1, H, seed=3), "b2": w(H, seed=4),
        "g1": 1 + 0.1 * w(H, seed=5), "be1": w(H, seed=6),
        "w3": w(H, f2, seed=7), "b3": w(f2, seed=8), "w4": w(f2, H, seed=9), "g2": 1 + 0.1 * w(H, seed=10),
        "w5": w(H, f3, seed=11), "w6": w(f3, OUT, seed=12), "g3": 1 + 0.1 * w(OUT, seed=13),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("BiasGelu", ["h1", "b1"], ["a1"], domain=MS),
        helper.make_node("MatMul", ["a1", "w2"], ["o1"]),
        helper.make_node("SkipLayerNormalization", ["o1", "x", "g1", "be1", "b2"], ["n1", "", "", "s1"],
                         domain=MS, epsilon=1e-5),
        helper.make_node("MatMul", ["n1", "w3"], ["h2"]),
        helper.make_node("FastGelu", ["h2", "b3"], ["a2"], domain=MS),
        helper.make_node("MatMul", ["a2", "w4"], ["o2"]),
        helper.make_node("SkipSimplifiedLayerNormalization", ["o2", "s1", "g2"], ["n2"], domain=MS, epsilon=1e-5),
        helper.make_node("MatMul", ["n2", "w5"], ["h3"]),
        helper.make_node("QuickGelu", ["h3"], ["a3"], domain=MS, alpha=1.702),
        helper.make_node("MatMul", ["a3", "w6"], ["o3"]),
        helper.make_node("Gelu", ["o3"], ["y" if not rms_out else "a4"], domain=MS),
    ]
    if rms_out:
        nodes.append(helper.make_node("SimplifiedLayerNormalization", ["a4", "g3"], ["y"], axis=-1, epsilon=1e-5))
    m = make_model(nodes, [("x", [batch, seq, H])], [("y", [batch, seq, OUT])], inits, check=False)
    m.opset_import.append(helper.make_opsetid(MS, 1))
    return m


def _expected_macs(rows: int) -> int:
    f1, f2, f3 = FFN.values()
    return rows * (H * f1 + f1 * H + H * f2 + f2 * H + H * f3 + f3 * OUT)


def test_shapes_go_through_the_fused_ops_and_their_macs_count():
    model = gp.load(_fused_block().SerializeToString())
    values = {v.name: v for n in model.graph for v in n.outputs}
    assert list(values["s1"].shape)[-1] == H  # the residual sum (SkipLayerNorm's output 3)
    assert list(values["y"].shape)[-1] == OUT
    assert model_cost(model, {"x": [2, 5, H]}).macs == _expected_macs(10)
    static = gp.load(_fused_block(2, 5).SerializeToString())
    assert model_cost(static).macs == _expected_macs(10)


def test_ffn_channels_around_fused_activations_prune_exactly():
    _, plan, dg = prune_and_check(_fused_block(2, 5), min_groups=3, full_check=False, fraction=0.5)
    assert sorted(g.num_atoms for g in dg.prunable_groups) == sorted(FFN.values())
    assert plan.groups  # something was removed, and the oracle held


@pytest.mark.parametrize("seed", [0, 1])
def test_dynamic_dims_prune_exactly(seed):
    prune_and_check(_fused_block(), min_groups=3, full_check=False, seed=seed)


def test_hidden_size_stays_whole_with_the_reason():
    dg = gp.analyze(gp.load(_fused_block(2, 5, rms_out=True).SerializeToString()))
    reasons = " ".join(r for f in dg.frozen_groups for r in f.reasons)
    assert "SkipLayerNormalization (ONNX Runtime's fused norm) normalises over this axis" in reasons
    assert "SimplifiedLayerNormalization (ONNX Runtime's RMSNorm) normalises over this axis" in reasons
    assert sorted(g.num_atoms for g in dg.prunable_groups) == sorted(FFN.values())  # not H, not OUT


def test_ort_rms_norm_keeps_its_axis_and_the_rest_prunes_exactly():
    """SimplifiedLayerNormalization: the output layer's channels it normalises stay whole;
    the oracle holds on the rest (onnx.checker cannot judge a model holding that op)."""
    from graphprune.runtime import oracle

    model = gp.load(_fused_block(rms_out=True).SerializeToString())
    assert list(model.graph.outputs[0].shape)[-1] == OUT
    assert model_cost(model, {"x": [2, 5, H]}).macs == _expected_macs(10)
    res = gp.prune(model, 0.5, round_to=1)
    assert len(res.plan.groups) == 3
    original = gp.load(_fused_block(rms_out=True).SerializeToString())
    result = oracle.check(original, res.model, res.plan, n_random=2, seed=0)
    assert result.ok, result.refused or result.diffs


def test_a_bias_that_is_not_a_vector_of_the_last_axis_freezes():
    m = _fused_block(2, 5)
    bad = onnx.numpy_helper.from_array(np.ones((1, FFN["ffn1"]), np.float32), "b1")
    for i, t in enumerate(m.graph.initializer):
        if t.name == "b1":
            m.graph.initializer[i].CopyFrom(bad)
    dg = gp.analyze(gp.load(m.SerializeToString()))
    assert FFN["ffn1"] not in [g.num_atoms for g in dg.prunable_groups]
    assert any("BiasGelu: a bias that is not one vector" in r for f in dg.frozen_groups for r in f.reasons)


def _attention_block(sizes=None, batch="b", seq="s", extra_output=False) -> onnx.ModelProto:
    """x [B, S, 16] -> Attention(4 heads; packed weight, bias) -> MatMul -> + x: ONNX
    Runtime's fused self-attention as its optimizer writes BERT. `sizes`: qkv_hidden_sizes
    (V heads of another size than Q/K); `extra_output`: the present (cache) output read."""
    q, k, v = sizes or (H, H, H)
    attrs = {"num_heads": 4, **({"qkv_hidden_sizes": list(sizes)} if sizes else {})}
    outs = ["att", "present"] if extra_output else ["att"]
    nodes = [helper.make_node("Attention", ["x", "wqkv", "bqkv"], outs, domain=MS, name="att", **attrs),
             helper.make_node("MatMul", ["att", "wo"], ["o"], name="out_proj"),
             helper.make_node("Add", ["o", "x"], ["y"], name="residual")]
    outputs = [("y", [batch, seq, H])] + ([helper.make_tensor_value_info("present", onnx.TensorProto.FLOAT, None)]
                                          if extra_output else [])
    m = make_model(nodes, [("x", [batch, seq, H])], outputs,
                   {"wqkv": w(H, q + k + v, seed=21), "bqkv": w(q + k + v, seed=22), "wo": w(v, H, seed=23)},
                   check=False)
    m.opset_import.append(helper.make_opsetid(MS, 1))
    return m


@pytest.mark.parametrize("sizes", [None, (H, H, 8)])
def test_attention_heads_prune_whole_and_exactly(sizes):
    """A head is one atom: its Q, K and V columns, its biases and its output channels (and
    the next layer's rows); num_heads (and qkv_hidden_sizes) follow."""
    v = (sizes or (H, H, H))[2]
    model, plan, dg = prune_and_check(_attention_block(sizes), min_groups=1, full_check=False,
                                      selection=None, fraction=0.5)
    (group,) = dg.prunable_groups
    assert group.num_atoms == 4
    node = next(n for n in model.graph if n.op_type == "Attention")
    left = int(node.attributes["num_heads"].value)
    assert 1 <= left < 4
    w_qkv = next(x for x in node.inputs if x is not None and x.name == "wqkv")
    assert list(w_qkv.shape) == [H, (2 * H + v) * left // 4]
    if sizes:
        assert list(node.attributes["qkv_hidden_sizes"].value) == [H * left // 4, H * left // 4, v * left // 4]


def test_attention_macs_count_the_projection_and_the_scores():
    model = gp.load(_attention_block().SerializeToString())
    b, s = 2, 5
    proj, scores = b * s * H * 3 * H, b * s * s * 2 * H
    assert model_cost(model, {"x": [b, s, H]}).macs == proj + scores + b * s * H * H
    res = gp.prune(model, selection={gp.analyze(gp.load(_attention_block().SerializeToString()))
                                     .prunable_groups[0].id: [0, 1]})
    assert model_cost(res.model, {"x": [b, s, H]}).macs == (proj + scores + b * s * H * H) // 2


def test_attention_with_a_cache_keeps_its_heads():
    dg = gp.analyze(gp.load(_attention_block(extra_output=True).SerializeToString()))
    assert not dg.prunable_groups
    assert any("Attention with a past/present cache" in r for f in dg.frozen_groups for r in f.reasons)
