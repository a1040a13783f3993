"""The standard Attention op (opset 23, rules/attention.py), as torch's dynamo exporter
writes scaled_dot_product_attention from opset 23 on: heads (with grouped queries, whole
key/value groups) prune exactly in the 4-D and the 3-D layout, the head size of Q and K
prunes with the scale written out, a mask with a head axis follows the heads, a cache keeps
them, and the MACs of the scores count."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

import graphprune as gp
from graphprune.analysis.cost import model_cost
from graphprune.runtime import oracle
from helpers import make_model, prune_and_check, w

E, D, DV = 16, 4, 6  # model width, head size of Q/K, head size of V


def _block(hq=4, hkv=4, layout=4, mask=None, cache=False, batch="b", seq="s", scale=None) -> onnx.ModelProto:
    """x [B, S, E] -> Q, K, V projections -> Attention -> output projection -> + x.
    4-D: each projection reshaped to [B, S, H, d] and transposed to [B, H, S, d], the output
    back; 3-D: the projections read directly, `q_num_heads` / `kv_num_heads` given.
    `mask`: "heads" (a float [1, Hq, S, S] additive mask, static S = 5) or "causal" (a
    bool [S, S]); `cache`: past_key / past_value graph inputs and present outputs."""
    inits = {"wq": w(E, hq * D, seed=1), "wk": w(E, hkv * D, seed=2), "wv": w(E, hkv * DV, seed=3),
             "wo": w(hq * DV, E, seed=4)}
    nodes, ins, outs = [], [("x", [batch, seq, E])], [("y", [batch, seq, E])]

    def project(name, heads, size):
        nodes.append(helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_flat"]))
        if layout == 3:
            return f"{name}_flat"
        inits[f"{name}_shape"] = np.array([0, 0, heads, size], np.int64)
        nodes.extend([helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [f"{name}_split"]),
                      helper.make_node("Transpose", [f"{name}_split"], [name], perm=[0, 2, 1, 3])])
        return name

    q, k, v = project("q", hq, D), project("k", hkv, D), project("v", hkv, DV)
    att_in = [q, k, v]
    if mask == "heads":
        inits["mask"] = w(1, hq, 5, 5, seed=5)
        att_in.append("mask")
    elif mask == "causal":
        inits["mask"] = np.tril(np.ones((5, 5), bool))
        att_in.append("mask")
    att_out = ["att"]
    if cache:
        att_in += [""] * (3 - len(att_in) + 1) if len(att_in) < 4 else []
        att_in += ["past_k", "past_v"]
        ins += [("past_k", [batch, hkv, "p", D]), ("past_v", [batch, hkv, "p", DV])]
        att_out += ["present_k", "present_v"]
        outs += [("present_k", [batch, hkv, "t", D]), ("present_v", [batch, hkv, "t", DV])]
    attrs = {"q_num_heads": hq, "kv_num_heads": hkv} if layout == 3 else {}
    if scale is not None:
        attrs["scale"] = scale
    nodes.append(helper.make_node("Attention", att_in, att_out, name="att", **attrs))
    merged = "att"
    if layout == 4:
        inits["o_shape"] = np.array([0, 0, hq * DV], np.int64)
        nodes.extend([helper.make_node("Transpose", ["att"], ["att_t"], perm=[0, 2, 1, 3]),
                      helper.make_node("Reshape", ["att_t", "o_shape"], ["att_m"])])
        merged = "att_m"
    nodes.extend([helper.make_node("MatMul", [merged, "wo"], ["o"]), helper.make_node("Add", ["o", "x"], ["y"])])
    return make_model(nodes, ins, outs, inits, opset=23, check=False)


def _attention(model):
    return next(n for n in model.graph if n.op_type == "Attention")


@pytest.mark.parametrize("layout", [4, 3])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("seed", [0, 1])
def test_heads_prune_exactly(layout, hq, hkv, seed):
    """A key/value head is one atom with the query heads reading it (one head each without
    grouping; with one key/value head, multi-query, each query head alone): its Q, K, V
    columns and the output projection's rows; the oracle holds."""
    m = _block(hq, hkv, layout)
    pruned, plan, dg = prune_and_check(m, seed=seed, fraction=0.5, full_check=True)
    per_atom = 1 if hkv == 1 else hq // hkv  # query heads per atom
    assert [g for g in dg.prunable_groups if g.num_atoms == hq // per_atom]
    assert plan.groups
    wq = pruned.graph.initializers["wq"]
    left = wq.shape[1] // D
    assert left < hq and left % per_atom == 0
    if layout == 3:  # the head counts follow
        att = _attention(pruned)
        assert int(att.attributes["q_num_heads"].value) == left
        assert int(att.attributes["kv_num_heads"].value) == (1 if hkv == 1 else left // per_atom)


def test_skipped_optional_outputs_leave_the_heads_prunable():
    """Outputs skipped with "" (present_key, present_value): they were taken for caches of
    unknown rank and froze every head (adversarial probe)."""
    m = _block(4, 2, 4)
    att = next(n for n in m.graph.node if n.op_type == "Attention")
    att.output.extend(["", ""])
    prune_and_check(m, fraction=0.5, full_check=False, min_groups=1)
    assert [g for g in gp.analyze(gp.load(m.SerializeToString())).prunable_groups if g.num_atoms == 2]


@pytest.mark.parametrize("layout", [4, 3])
def test_a_mask_with_a_head_axis_follows_the_heads(layout):
    pruned, plan, _ = prune_and_check(_block(4, 2, layout, mask="heads", batch=2, seq=5), fraction=0.5)
    assert list(pruned.graph.initializers["mask"].shape) == [1, 2, 5, 5]  # one of two key/value groups left
    prune_and_check(_block(4, 4, layout, mask="causal", batch=2, seq=5), fraction=0.5)


def _head_size_block(scale=None, qk_norm=False) -> onnx.ModelProto:
    """Q and K made by an Einsum over weights [E, H, D] (heads and head size on their own
    axes, as a 1x1 conv or einsum projection gives them): the head size is its own group.
    `qk_norm`: an RMSNormalization over D of Q and of K (QK-norm, as Qwen3 has)."""
    inits = {"wq": w(E, 3, D, seed=1), "wk": w(E, 3, D, seed=2), "wv": w(E, 3, DV, seed=3),
             "wo": w(3, DV, E, seed=4)}  # 3 heads: not to be taken for the head size's group
    made = {n: f"{n}0" if qk_norm and n != "v" else n for n in "qkv"}
    nodes = [helper.make_node("Einsum", ["x", f"w{n}"], [made[n]], equation="bse,ehd->bhsd") for n in "qkv"]
    if qk_norm:
        inits.update({"gq": 1 + 0.1 * w(D, seed=5), "gk": 1 + 0.1 * w(D, seed=6)})
        nodes += [helper.make_node("RMSNormalization", [f"{n}0", f"g{n}"], [n], axis=-1) for n in "qk"]
    attrs = {} if scale is None else {"scale": scale}
    nodes += [helper.make_node("Attention", ["q", "k", "v"], ["att"], name="att", **attrs),
              helper.make_node("Einsum", ["att", "wo"], ["y"], equation="bhsd,hde->bse")]
    return make_model(nodes, [("x", ["b", "s", E])], [("y", ["b", "s", E])], inits, opset=23, check=False)


def test_the_head_size_prunes_with_the_scale_of_the_input_written_out():
    """Without a `scale` attribute the op scales by 1/sqrt(D) of its own input: a narrower D
    would change it, so the pruned node gets the input's scale written out. The same model
    without it fails the oracle (the check can fail)."""
    m = _head_size_block()
    model = gp.load(m.SerializeToString())
    dg = gp.analyze(model)
    qk = next(g for g in dg.prunable_groups if g.num_atoms == D and any("wq" in s.value for s in g.slots))
    res = gp.prune(model, selection={qk.id: [1, 3]})
    att = _attention(res.model)
    assert list(res.model.graph.initializers["wq"].shape) == [E, 3, D - 2]
    assert att.attributes["scale"].value == pytest.approx(1 / math.sqrt(D))
    original = ir.serde.deserialize_model(onnx.load_from_string(m.SerializeToString()))
    assert oracle.check(original, res.model, res.plan).ok
    del att.attributes["scale"]
    assert not oracle.check(original, res.model, res.plan).ok


def test_a_head_size_under_a_qk_norm_writes_the_scale_of_the_input():
    """The norm keeps its statistics over the original D by a rewrite that puts a new value
    in Q's place: the scale's rewrite looked the removed channels up on the old value, found
    none, and wrote no scale (the pruned model scaled by 1/sqrt of the narrower D; adversarial
    probe: 0.25 relative difference, oracle FAIL)."""
    m = _head_size_block(qk_norm=True)
    res = gp.prune(gp.load(m.SerializeToString()), 0.5, round_to=1, prune_hidden=True)
    assert res.model.graph.initializers["wq"].shape[2] == D // 2  # (heads may go too)
    assert _attention(res.model).attributes["scale"].value == pytest.approx(1 / math.sqrt(D))
    original = ir.serde.deserialize_model(onnx.load_from_string(m.SerializeToString()))
    assert oracle.check(original, res.model, res.plan).ok


@pytest.mark.parametrize("path", ["in_memory", "large_model", "files"])
def test_the_oracle_draws_key_lengths_that_let_scores_show(path, monkeypatch, tmp_path):
    """nonpad_kv_seqlen (opset 24) as a graph input: random 0s and 1s let every query see at
    most one key, whose softmax weight is 1 whatever the scores, and a pruned model with a
    wrong scale passed (adversarial probe: PASS, error 0; 0.2 off at real lengths). The
    lengths are drawn up to the key positions now, so the wrong model fails; also where the
    oracle goes through files (models over BIG_MODEL_BYTES, and the check verb's files)."""
    if path == "large_model":
        from graphprune.ir import serialize

        monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
    inits = {"wq": w(E, 3, D, seed=1), "wk": w(E, 3, D, seed=2), "wv": w(E, 3, DV, seed=3),
             "wo": w(3, DV, E, seed=4)}
    nodes = [helper.make_node("Einsum", ["x", f"w{n}"], [n], equation="bse,ehd->bhsd") for n in "qkv"]
    nodes += [helper.make_node("Attention", ["q", "k", "v", "", "", "", "lengths"], ["att"], name="att"),
              helper.make_node("Einsum", ["att", "wo"], ["y"], equation="bhsd,hde->bse")]
    lengths = helper.make_tensor_value_info("lengths", onnx.TensorProto.INT64, ["b"])
    m = make_model(nodes, [("x", ["b", "s", E]), lengths], [("y", ["b", "s", E])], inits, opset=24, check=False)
    model = gp.load(m.SerializeToString())
    dg = gp.analyze(model)
    qk = next(g for g in dg.prunable_groups if g.num_atoms == D and any("wq" in s.value for s in g.slots))
    res = gp.prune(model, selection={qk.id: [1, 3]})
    original = ir.serde.deserialize_model(onnx.load_from_string(m.SerializeToString()))
    good = oracle.check(original, res.model, res.plan)
    assert good.ok
    assert any(n == "lengths" for shapes in good.sizes for n in shapes.int_high)
    del _attention(res.model).attributes["scale"]  # 1/sqrt of the narrower D: wrong
    if path == "files":
        (tmp_path / "in.onnx").write_bytes(m.SerializeToString())
        gp.save(res.model, tmp_path / "bad.onnx")
        assert not oracle.check_files(str(tmp_path / "in.onnx"), str(tmp_path / "bad.onnx"), res.plan).ok
    else:
        assert not oracle.check(original, res.model, res.plan).ok


def test_a_given_scale_is_kept():
    res = gp.prune(gp.load(_head_size_block(scale=0.3).SerializeToString()), 0.5, round_to=1)
    assert _attention(res.model).attributes["scale"].value == pytest.approx(0.3)
    prune_and_check(_head_size_block(scale=0.3), fraction=0.5)


def test_a_cache_in_the_graph_inputs_keeps_the_heads():
    """past_key / past_value are graph inputs: their head axis keeps its size, and so do the
    heads coupled to it; the output projection's other widths still prune."""
    dg = gp.analyze(gp.load(_block(4, 2, 4, cache=True).SerializeToString()))
    assert not [g for g in dg.prunable_groups if g.num_atoms == 2]
    assert any("graph input keeps its shape" in r for f in dg.frozen_groups for r in f.reasons)


@pytest.mark.parametrize("layout", [4, 3])
def test_macs_count_the_scores_and_the_weighted_sum(layout):
    b, s, hq, hkv = 2, 5, 4, 2
    model = gp.load(_block(hq, hkv, layout).SerializeToString())
    projections = b * s * E * (hq * D + hkv * D + hkv * DV) + b * s * hq * DV * E
    scores = b * hq * s * s * (D + DV)
    assert model_cost(model, {"x": [b, s, E]}).macs == projections + scores
