"""Mixture-of-experts layers in ONNX Runtime's form (com.microsoft MoE, issue 16 §3): the
expert-FFN channels are pruned in every expert at once, the hidden size through the experts'
input and output weights, under the oracle; interleaved SwiGLU and layouts the rule does not
know stay frozen (fail closed). Whole experts go by `keep_experts` (prune-experts): the most
routed-to are kept, and the oracle's reference routes nothing to the removed ones."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

import graphprune as gp
from graphprune.runtime import oracle
from helpers import make_model, prune_and_check, w

E, H, INTER, K, TOKENS = 4, 16, 24, 2, 6


def moe_model(*, gated: bool = False, activation: str = "relu", swiglu_fusion: int = 0, normalize: int = 0,
              fc1_layout: str = "EIH", fc1_input: bool = False, router_bias=None,
              logits_output: bool = False) -> onnx.ModelProto:
    """x [T, H] -> MatMul -> h; router logits = h @ Wr; h + MoE(h) -> MatMul -> y [T, 8].
    No norm on the residual, so the hidden size is a prunable group too."""
    rows = 2 * INTER if swiglu_fusion else INTER
    fc1 = w(E, rows, H, seed=1, scale=0.3) if fc1_layout == "EIH" else w(E, H, rows, seed=1, scale=0.3)
    inits = {"w_in": w(H, H, seed=0, scale=0.3), "w_r": w(H, E, seed=2), "fc1_b": w(E, rows, seed=3, scale=0.1),
             "fc2": w(E, H, INTER, seed=4, scale=0.3), "fc2_b": w(E, H, seed=5, scale=0.1),
             "w_out": w(H, 8, seed=6, scale=0.3)}
    if not fc1_input:
        inits["fc1"] = fc1
    moe_inputs = ["h", "logits", "fc1", "fc1_b", "fc2", "fc2_b"]
    if gated:
        inits["fc3"] = w(E, INTER, H, seed=7, scale=0.3)
        moe_inputs.append("fc3")
    if router_bias is not None:  # a Gemm router with a bias
        inits["b_r"] = np.asarray(router_bias, np.float32)
        router = helper.make_node("Gemm", ["h", "w_r", "b_r"], ["logits"])
    else:
        router = helper.make_node("MatMul", ["h", "w_r"], ["logits"])
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"]),
             router,
             helper.make_node("MoE", moe_inputs, ["m"], domain="com.microsoft", k=K, activation_type=activation,
                              normalize_routing_weights=normalize, **({"swiglu_fusion": swiglu_fusion}
                                                                      if swiglu_fusion else {})),
             helper.make_node("Add", ["h", "m"], ["z"]),
             helper.make_node("MatMul", ["z", "w_out"], ["y"])]
    inputs = [("x", ["T", H])] + ([("fc1", list(fc1.shape))] if fc1_input else [])
    outputs = [("y", ["T", 8])] + ([("logits", ["T", E])] if logits_output else [])
    m = make_model(nodes, inputs, outputs, inits, check=False)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m


def _reference(x, inits, normalize: int) -> np.ndarray:
    """The MoE layer in numpy, as ORT's spec describes it: softmax over all experts, top k,
    optionally renormalised; relu experts."""
    h = x @ inits["w_in"]
    logits = h @ inits["w_r"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(len(h)):
        top = np.argsort(-p[t])[:K]
        weights = p[t, top] / (p[t, top].sum() if normalize else 1.0)
        for e, we in zip(top, weights, strict=True):
            act = np.maximum(inits["fc1"][e] @ h[t] + inits["fc1_b"][e], 0)
            out[t] += we * (inits["fc2"][e] @ act + inits["fc2_b"][e])
    return (h + out) @ inits["w_out"]


@pytest.mark.parametrize("normalize", [0, 1])
def test_the_rules_layout_is_onnx_runtimes(normalize):
    """fc1 [E, I, H], fc2 [E, H, I], softmax over all experts then top k: the layout the rule
    is written for, checked against ONNX Runtime itself."""
    from graphprune.runtime.ort import session

    proto = moe_model(normalize=normalize)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    x = w(TOKENS, H, seed=9)
    got = session(proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _reference(x, inits, normalize), rtol=1e-4, atol=1e-5)


def _groups(proto):
    dg = gp.analyze(gp.load(proto.SerializeToString()))
    by_slot = {}
    for g in dg.prunable_groups:
        for s in g.slots:
            by_slot[(s.value, s.axis)] = g
    return dg, by_slot


@pytest.mark.parametrize("gated", [False, True])
def test_expert_channels_form_one_group_across_experts(gated):
    dg, by_slot = _groups(moe_model(gated=gated))
    inter = by_slot[("fc1", 1)]
    assert inter.num_atoms == INTER and by_slot[("fc2", 2)] is inter and by_slot[("fc1_b", 1)] is inter
    if gated:
        assert by_slot[("fc3", 1)] is inter
    hidden = by_slot[("fc1", 2)]
    assert hidden is by_slot[("fc2", 1)] is by_slot[("w_in", 1)] is by_slot[("w_out", 0)] is by_slot[("fc2_b", 1)]
    # the expert axis is never a channel group: zeroing an expert does not remove it from routing
    assert ("fc1", 0) not in by_slot and ("w_r", 1) not in by_slot
    reasons = " ".join(r for f in dg.frozen_groups for r in f.reasons)
    assert "whole experts are not channels" in reasons


@pytest.mark.parametrize("normalize", [0, 1])
def test_pruned_moe_equals_the_masked_original(normalize):
    # (gated experts, fc3: ONNX Runtime's CPU MoE does not implement FC3, so no oracle can run
    # them here; their coupling is checked above, and a run on them stops at the oracle)
    model, plan, _ = prune_and_check(moe_model(normalize=normalize), fraction=0.5, min_groups=2, full_check=False)
    sliced = {(t["name"], t["axis"]) for t in plan.tensors}
    assert {("fc1", 1), ("fc2", 2), ("fc1_b", 1), ("fc1", 2), ("fc2", 1)} <= sliced
    shapes = {v.name: list(v.shape) for v in model.graph.initializers.values()}
    assert shapes["fc1"][0] == shapes["fc2"][0] == E  # every expert kept
    assert shapes["fc1"][1] == shapes["fc2"][2] == INTER // 2 and shapes["fc1"][2] == shapes["fc2"][1] < H


def test_the_oracle_fails_a_moe_whose_expert_channels_disagree():
    """A slicing that takes different channels from fc1 and fc2 is caught: the oracle
    guards this rule, it does not just rubber-stamp it."""
    proto = moe_model()
    model = gp.load(proto.SerializeToString())
    dg = gp.analyze(model)
    inter = next(g for g in dg.prunable_groups if any(s.value == "fc1" and s.axis == 1 for s in g.slots))
    res = gp.prune(model, selection={inter.id: list(range(INTER // 2))})
    fc2 = res.model.graph.initializers["fc2"]
    good = fc2.const_value.numpy()
    fc2.const_value = ir.tensor(np.roll(good, 1, axis=2), name="fc2")  # the wrong columns
    original = ir.serde.deserialize_model(proto)
    assert not oracle.check(original, res.model, res.plan, n_random=2).ok


@pytest.mark.parametrize("variant,reason", [
    ({"swiglu_fusion": 1, "activation": "swiglu"}, "packs fc1's rows"),
    ({"fc1_layout": "EHI"}, "ONNX Runtime's layout"),
    ({"fc1_input": True}, "not constants"),
])
def test_what_the_rule_does_not_know_stays_frozen(variant, reason):
    dg, by_slot = _groups(moe_model(**variant))
    assert ("fc1", 1) not in by_slot and ("fc2", 2) not in by_slot
    reasons = " ".join(r for f in dg.frozen_groups for r in f.reasons)
    assert reason in reasons


def test_cli_prunes_a_moe_model_with_the_oracle(tmp_path, capsys):
    from graphprune.cli.main import main

    src = tmp_path / "moe.onnx"
    onnx.save(moe_model(), src)
    out = tmp_path / "moe.pruned.onnx"
    assert main(["prune", str(src), "--ratio", "0.5", "--round-to", "1", "--no-bench", "-o", str(out)]) == 0
    assert "oracle PASS" in capsys.readouterr().out
    fc1 = {t.name: t for t in onnx.load(out).graph.initializer}["fc1"]
    assert list(fc1.dims) == [E, INTER // 2, H // 2]


# ---- whole experts (prune-experts) ---------------------------------------------------------------


def _shapes(model) -> dict[str, list]:
    return {v.name: list(v.shape) for v in model.graph.initializers.values()}


def _check(proto, res) -> oracle.OracleResult:
    return oracle.check(ir.serde.deserialize_model(proto), res.model, res.plan, n_random=3)


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_keep_experts_removes_the_least_routed_and_equals_the_rerouted_original(ratio):
    # a router bias that sends (almost) everything to experts 1 and 3
    proto = moe_model(router_bias=[-20.0, 0.0, -20.0, 0.0])
    res = gp.prune(gp.load(proto.SerializeToString()), ratio, round_to=1, keep_experts=2)
    (rec,) = res.plan.experts
    assert rec["removed"] == [0, 2] and rec["experts"] == E and rec["k"] == K
    shapes = _shapes(res.model)
    assert shapes["fc1"][0] == shapes["fc2"][0] == shapes["fc1_b"][0] == shapes["fc2_b"][0] == 2
    assert shapes["w_r"] == [shapes["w_in"][1], 2] and shapes["b_r"] == [2]
    r = _check(proto, res)
    assert r.ok, r.diffs
    if ratio:
        assert shapes["fc1"][1] < INTER and res.plan.tensors  # channels pruned too, after the experts


def test_the_oracle_fails_when_the_record_names_other_experts_than_were_removed():
    proto = moe_model(router_bias=[-20.0, 0.0, -20.0, 0.0])
    res = gp.prune(gp.load(proto.SerializeToString()), 0.0, keep_experts=2)
    assert _check(proto, res).ok
    res.plan.experts[0]["removed"] = [1, 3]  # the kept ones: the reference now routes elsewhere
    for t in res.plan.experts[0]["tensors"]:
        t["removed"] = [1, 3]
    assert not _check(proto, res).ok


def test_an_expert_plan_replays_and_checks_from_files(tmp_path):
    from graphprune.plan import Plan

    src = tmp_path / "moe.onnx"
    onnx.save(moe_model(), src)
    res = gp.prune(src, 0.3, round_to=1, keep_experts=3)
    gp.save(res.model, tmp_path / "p.onnx")
    res.plan.save(tmp_path / "p.plan.json")
    plan = Plan.load(tmp_path / "p.plan.json")
    assert plan.experts == res.plan.experts and len(plan.experts[0]["removed"]) == 1
    assert gp.check(src, tmp_path / "p.onnx", tmp_path / "p.plan.json").ok
    replay = gp.prune(src, plan=plan)
    assert replay.plan.experts == res.plan.experts and replay.plan.tensors == res.plan.tensors
    assert _shapes(replay.model) == _shapes(res.model)


@pytest.mark.parametrize("variant,keep,message", [
    ({}, 1, "at least its top-k"),
    ({}, E, "fewer than its"),
    ({"logits_output": True}, 2, "read by other nodes"),
])
def test_keep_experts_refuses_what_it_cannot_remove_exactly(variant, keep, message):
    from graphprune.errors import UsageError

    with pytest.raises(UsageError, match=message):
        gp.prune(gp.load(moe_model(**variant).SerializeToString()), 0.0, keep_experts=keep)


def test_keep_experts_on_a_model_without_moe_is_a_usage_error():
    from graphprune.errors import UsageError
    from samples.make_samples import tiny_resnet

    with pytest.raises(UsageError, match="no com.microsoft MoE layer"):
        gp.prune(gp.load(tiny_resnet().SerializeToString()), 0.0, keep_experts=2)


@pytest.mark.parametrize("bad", [
    {"moe": "m", "logits": "l", "experts": 4, "removed": [4], "tensors": []},  # out of range
    {"moe": "m", "logits": "l", "experts": 4, "removed": [0, 1, 2, 3], "tensors": []},  # every expert
    {"moe": "m", "experts": 4, "removed": [0], "tensors": []},  # no logits
    {"moe": "m", "logits": "l", "experts": 4, "removed": [0], "tensors": [{"name": "fc1", "axis": 0,
                                                                           "removed": [1]}]},
])
def test_malformed_expert_records_are_plan_errors(bad):
    from graphprune.errors import PlanError
    from graphprune.plan import validate_plan

    with pytest.raises(PlanError):
        validate_plan({"version": 1, "tensors": [], "groups": [], "experts": [bad]})


def test_cli_keep_experts(tmp_path, capsys):
    from graphprune.cli.main import main

    src = tmp_path / "moe.onnx"
    onnx.save(moe_model(), src)
    out = tmp_path / "moe.pruned.onnx"
    assert main(["prune", str(src), "--ratio", "0", "--keep-experts", "2", "--no-bench", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "experts 4 -> 2 in 1 MoE layer(s)" in text and "oracle PASS" in text
    assert main(["check", str(src), str(out), "--plan", str(tmp_path / "moe.pruned.plan.json")]) == 0


def test_moe_macs_count_the_active_experts():
    from graphprune.analysis.cost import model_cost

    model = gp.load(moe_model().SerializeToString())
    cost = model_cost(model, {"x": [TOKENS, H]})
    dense_layers = TOKENS * (H * H + H * E + H * 8)  # w_in, router, w_out
    assert cost.macs == dense_layers + TOKENS * K * (INTER * H + H * INTER)
    pruned = gp.prune(model, 0.0, keep_experts=2).model  # fewer experts, same k: the same active MACs
    assert model_cost(pruned, {"x": [TOKENS, H]}).macs == cost.macs - TOKENS * H * 2


def test_target_macs_sees_the_experts_macs():
    """The allocation's cost model counts the MoE layer's active MACs, so a MAC target is met
    on the pruned model as measured (not only on the dense layers around it)."""
    from graphprune.analysis.cost import model_cost

    model = gp.load(moe_model().SerializeToString())
    before = model_cost(model, {"x": [TOKENS, H]}).macs
    from graphprune.workflow import PruneOptions, run_prune

    out = run_prune(model, PruneOptions(round_to=1, check=False, input_shapes={"x": [TOKENS, H]},
                                        allocation={"target_macs": 0.6}))
    after = model_cost(out.model, {"x": [TOKENS, H]}).macs
    assert 0.5 < after / before <= 0.6 + 1e-9
    assert out.plan.settings["allocation_result"]["reached"]


def test_target_active_params_counts_experts_at_k_over_e():
    from graphprune.allocation.cost import param_terms

    model = gp.load(moe_model().SerializeToString())
    active = dict((n, p) for n, p, _ in param_terms(model, active=True))
    total = dict((n, p) for n, p, _ in param_terms(model))
    assert active["fc1"] == total["fc1"] * K / E and active["fc2_b"] == total["fc2_b"] * K / E
    assert active["w_in"] == total["w_in"] and active["w_r"] == total["w_r"]
    from graphprune.workflow import PruneOptions, run_prune

    out = run_prune(model, PruneOptions(round_to=1, check=False, allocation={"target_active_params": 0.7}))
    kept = dict((n, p) for n, p, _ in param_terms(out.model, active=True))
    assert 0.6 < sum(kept.values()) / sum(active.values()) <= 0.7 + 1e-9


@pytest.mark.parametrize("variant,expect", [({}, "1 MoE layer(s) (4 experts, top 2): --keep-experts N"),
                                            ({"logits_output": True}, "--keep-experts would be refused")])
def test_inspect_shows_the_moe_layers(tmp_path, capsys, variant, expect):
    from graphprune.cli.main import main

    src = tmp_path / "moe.onnx"
    onnx.save(moe_model(**variant), src)
    assert main(["inspect", str(src)]) == 0
    assert expect in capsys.readouterr().out


def test_prune_report_lists_the_removed_experts(tmp_path):
    import json

    from graphprune.cli.main import main

    src = tmp_path / "moe.onnx"
    onnx.save(moe_model(router_bias=[-20.0, 0.0, -20.0, 0.0]), src)
    out = tmp_path / "m.onnx"
    assert main(["prune", str(src), "--ratio", "0", "--keep-experts", "2", "--no-bench", "-o", str(out)]) == 0
    rep = json.loads((tmp_path / "m.report.json").read_text())
    assert rep["plan"]["experts"] == [{"moe": rep["plan"]["experts"][0]["moe"], "experts": 4, "kept": 2,
                                       "removed": [0, 2]}]


def test_dry_run_and_compile_take_keep_experts(tmp_path, capsys):
    import json

    from graphprune.cli.main import main

    src = tmp_path / "moe.onnx"
    onnx.save(moe_model(), src)
    assert main(["prune", str(src), "--ratio", "0", "--keep-experts", "2", "--dry-run"]) == 0
    assert "experts (--keep-experts): 4 -> 2 in 1 MoE layer(s)" in capsys.readouterr().out
    assert not list(tmp_path.glob("moe.pruned*"))
    out = tmp_path / "c"
    assert main(["compile", str(src), "--target", "x86", "--ratio", "0", "--keep-experts", "3", "-o", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [len(e["removed"]) for e in plan["experts"]] == [1]
    assert "oracle: PASS" in capsys.readouterr().out


def test_a_large_moe_model_is_checked_through_files(tmp_path, capsys, monkeypatch):
    """Above BIG_MODEL_BYTES the oracle builds the masked original on disk: removed experts
    are rerouted there too (else a correct pruning would FAIL)."""
    from graphprune.cli.main import main
    from graphprune.ir import serialize

    monkeypatch.setattr(serialize, "BIG_MODEL_BYTES", 0)
    src = tmp_path / "moe.onnx"
    onnx.save(moe_model(), src)  # every expert routed to: a removed one changes the outputs unless rerouted
    out = tmp_path / "m.onnx"
    assert main(["prune", str(src), "--ratio", "0.3", "--round-to", "1", "--keep-experts", "3", "--no-bench",
                 "-o", str(out)]) == 0
    assert "oracle PASS" in capsys.readouterr().out
    assert main(["check", str(src), str(out), "--plan", str(tmp_path / "m.plan.json")]) == 0
    assert "oracle PASS" in capsys.readouterr().out
