"""QDQ models in (issue 16 §4): models quantized by onnxruntime.quantization.quantize_static
(QuantFormat.QDQ, per-channel and per-tensor weights, int8 and uint8) are pruned through
the API and the CLI; the pruned model is physically smaller in its integer weights and
their scales, runs in ONNX Runtime, and equals the quantized original with the removed
channels masked (the oracle). A wrongly sliced model and a masking that ignores zero points
are caught; what is not supported is refused or frozen."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphprune as gp
from graphprune.cli.main import main
from graphprune.runtime import oracle
from qdq_models import (FLOAT_MODELS, check_files_needs_zero_points, dynamic, float_cos_mlp, initializers,
                        quantized)

pytest.importorskip("onnxruntime.quantization")

CASES = [(m, pc, wt) for m in FLOAT_MODELS for pc in (True, False) for wt in ("QInt8", "QUInt8")]


@pytest.fixture(scope="module")
def qmodels(tmp_path_factory):
    d = tmp_path_factory.mktemp("qdq")
    return {(m, pc, wt): quantized(FLOAT_MODELS[m](), d / f"{m}_{int(pc)}_{wt}.onnx", per_channel=pc, weight_type=wt)
            for m, pc, wt in CASES}


def _ort_run(model: ir.Model, feeds: dict) -> list:
    import onnxruntime as ort

    data = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)  # default: all optimisations


def _feeds(path) -> dict:
    inp = onnx.load(path).graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.random.default_rng(5).standard_normal(shape).astype(np.float32)}


def _dq_params(path) -> dict[str, tuple[str, str, int]]:
    """quantized weight name -> (scale name, zero point name, axis) of its DequantizeLinear."""
    m = onnx.load(path)
    out = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear":
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            out[n.input[0]] = (n.input[1], n.input[2], axis)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'per_channel' if c[1] else 'per_tensor'}-{c[2]}")
def test_qdq_prunes_shrinks_and_passes_the_oracle(qmodels, case):
    src = qmodels[case]
    per_channel = case[1]
    res = gp.prune(src, 0.5)
    assert res.changed and res.plan.tensors
    before = initializers(src)
    after = {v.name: v.const_value.numpy() for v in res.model.graph.initializers.values()}
    dq = _dq_params(src)
    planned = {(t["name"], t["axis"]): t["removed"] for t in res.plan.tensors}
    for (name, axis), removed in planned.items():
        assert after[name].shape[axis] == before[name].shape[axis] - len(removed)
        assert after[name].dtype == before[name].dtype  # still integer weights, float scales
    weights = [(n, ax) for n, ax in planned if n in dq and before[n].ndim >= 2]
    assert weights, "no quantized weight lost channels"
    for name, _ in weights:
        scale, zp, q_axis = dq[name]
        if before[scale].size > 1:  # per-axis: sliced exactly where the weight's quantization axis is
            assert planned.get((scale, 0)) == planned.get((name, q_axis)) == planned.get((zp, 0))
            assert after[scale].shape[0] == after[name].shape[q_axis]
        else:  # per-tensor: kept as it is
            assert (scale, 0) not in planned and after[scale].shape == before[scale].shape
            assert after[zp].shape == before[zp].shape
    scales = {s for s, _, _ in dq.values()}
    assert any(n in scales for n, _ in planned) == per_channel
    result = gp.check(gp.load(src, fold=False), res.model, res.plan)
    assert result.ok and not result.refused, result.summary()
    out = _ort_run(res.model, _feeds(src))  # ORT's fused int8 kernels run the pruned model too
    assert np.all(np.isfinite(out[0]))
    from graphprune.analysis.cost import model_cost

    assert model_cost(res.model).params < model_cost(gp.load(src)).params


def _pruned(qmodels, case):
    src = qmodels[case]
    res = gp.prune(src, 0.5)
    return src, res


def test_mis_sliced_scale_is_caught(qmodels):
    """Slicing a per-channel scale at other indices than its weight's is a wrong model."""
    src, res = _pruned(qmodels, ("cnn", True, "QInt8"))
    orig_scales = initializers(src)
    entry = next(t for t in res.plan.tensors if t["name"] == "c1.w_scale")
    kept = np.setdiff1d(np.arange(orig_scales["c1.w_scale"].size), entry["removed"])
    wrong = orig_scales["c1.w_scale"][: len(kept)]  # the first channels' scales, not the kept ones'
    assert not np.array_equal(wrong, orig_scales["c1.w_scale"][kept])
    res.model.graph.initializers["c1.w_scale"].const_value = ir.tensor(wrong, name="c1.w_scale")
    assert gp.check(gp.load(src, fold=False), res.model, res.plan).ok is False


def test_mis_sliced_per_tensor_weight_is_caught(qmodels):
    src, res = _pruned(qmodels, ("mlp", False, "QUInt8"))
    v = res.model.graph.initializers["w2_quantized"]
    v.const_value = ir.tensor(np.roll(v.const_value.numpy(), 1, axis=0), name=v.name)
    assert gp.check(gp.load(src, fold=False), res.model, res.plan).ok is False


@pytest.mark.parametrize("case", [("cnn", False, "QUInt8"), ("mlp", False, "QUInt8")])
def test_masking_by_plain_zeros_would_not_match(qmodels, case, monkeypatch):
    """The masked original sets a removed slice of a quantized weight to its zero point.
    With uint8 weights (zero points ~128), zeroing the integers instead leaves (0 - zp) *
    scale in the masked original: the comparison fails. This is what makes the masking
    needed, and shows the oracle is not vacuous on these models. (With per-channel scales
    the removed channels' scales are zeroed too, which often hides it: per-tensor cases.)"""
    src, res = _pruned(qmodels, case)
    original = gp.load(src, fold=False)
    assert gp.check(original, res.model, res.plan).ok
    monkeypatch.setattr(oracle, "_quantized_fill", lambda v: None)
    assert gp.check(original, res.model, res.plan).ok is False


def test_plan_replays_on_a_quantized_model(qmodels):
    src, res = _pruned(qmodels, ("cnn", True, "QUInt8"))
    again = gp.prune(src, plan=res.plan)
    assert again.plan.tensors == res.plan.tensors
    for v in res.model.graph.initializers.values():
        np.testing.assert_array_equal(v.const_value.numpy(), again.model.graph.initializers[v.name].const_value.numpy())


def test_cli_prunes_and_checks_a_qdq_model(qmodels, tmp_path, capsys):
    src = qmodels[("cnn", True, "QInt8")]
    out = tmp_path / "small.onnx"
    assert main(["prune", src, "--ratio", "0.5", "-o", str(out), "--no-bench"]) == 0
    text = capsys.readouterr().out
    assert "oracle PASS" in text
    before, after = initializers(src), initializers(out)
    assert after["c2.w_quantized"].shape[0] < before["c2.w_quantized"].shape[0]
    assert after["c2.w_quantized"].shape[1] < before["c2.w_quantized"].shape[1]
    assert after["c2.w_scale"].shape[0] == after["c2.w_quantized"].shape[0]
    assert after["c2.w_quantized"].dtype == np.int8
    plan = tmp_path / "small.plan.json"
    assert main(["check", src, str(out), "--plan", str(plan), "-q"]) == 0


DYNAMIC = [("mlp", False, "QInt8"), ("mlp", True, "QInt8"), ("mlp", False, "QUInt8"), ("cnn", False, "QUInt8")]


@pytest.mark.parametrize("case", DYNAMIC, ids=lambda c: f"{c[0]}-{'per_channel' if c[1] else 'per_tensor'}-{c[2]}")
def test_dynamically_quantized_models_prune_exactly_as_their_float_model(case, tmp_path):
    """quantize_dynamic's DynamicQuantizeLinear + MatMulInteger / ConvInteger: the integer
    weights and their zero points shrink, the oracle is exact (integer sums, a range that the
    removed zero channels do not change), and the channels chosen are the float model's
    (weights ranked as (q - zp) * the scale multiplied in after the op)."""
    name, per_channel, wt = case
    fm = FLOAT_MODELS[name]()
    dyn = dynamic(fm, tmp_path / "dyn.onnx", per_channel=per_channel, weight_type=wt,
                  ops=("Conv",) if name == "cnn" else ("MatMul",))
    ops = {n.op_type for n in onnx.load(dyn).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger" if name == "cnn" else "MatMulInteger"} <= ops
    res = gp.prune(dyn, 0.5, round_to=1)
    assert res.plan.groups and all(g["removed_atoms"] for g in res.plan.groups)
    result = gp.check(gp.load(dyn, fold=False), res.model, res.plan)
    assert result.ok and result.worst_relative == 0.0, result.summary()
    before = initializers(dyn)
    after = {v.name: v.const_value.numpy() for v in res.model.graph.initializers.values()}
    shrunk = [n for n, a in before.items() if a.dtype in (np.int8, np.uint8) and a.ndim > 1
              and after.get(n) is not None and after[n].size < a.size]
    assert shrunk
    float_plan = gp.prune(fm.SerializeToString(), 0.5, round_to=1).plan
    assert [g["removed_atoms"] for g in res.plan.groups] == [g["removed_atoms"] for g in float_plan.groups]


def test_dynamic_quantization_of_a_cos_freezes_its_channels(tmp_path, monkeypatch):
    """A removed hidden channel is cos(0) = 1 in the masked original: it stretches the range
    DynamicQuantizeLinear takes its scale from, so removing it would not be exact. The axis
    is frozen; coupled anyway, the oracle fails."""
    from graphprune.analysis.dependency.rules import quant as quant_rules

    dyn = dynamic(float_cos_mlp(), tmp_path / "dyn.onnx")
    dg = gp.analyze(dyn)
    assert not dg.prunable_groups
    assert any("DynamicQuantizeLinear takes its scale" in r for g in dg.frozen_groups for r in g.reasons)
    monkeypatch.setattr(quant_rules, "keeps_zero", lambda v, ax: True)
    res = gp.prune(dyn, 0.5, round_to=1)
    assert res.plan.groups
    assert not gp.check(gp.load(dyn, fold=False), res.model, res.plan).ok


@pytest.mark.torch
def test_a_dynamically_quantized_bert_prunes_heads_and_ffn_like_the_float_one(tmp_path):
    """Heads reach the output projection's DynamicQuantizeLinear through the merge of heads
    and head dims (a Reshape): zero there when both are (rules.zero_channels.merged_axes)."""
    pytest.importorskip("transformers")
    from zoo.hf_models import export_hf

    src = export_hf("bert", str(tmp_path / "bert.onnx"), False)
    dyn = dynamic(onnx.load(src), tmp_path / "bert_dyn.onnx")
    fg, dg = gp.analyze(src).prunable_groups, gp.analyze(dyn).prunable_groups
    assert sorted(g.num_atoms for g in dg) == sorted(g.num_atoms for g in fg)
    res = gp.prune(dyn, 0.5, round_to=1)
    assert len(res.plan.groups) == len(fg) and all(g["removed_atoms"] for g in res.plan.groups)
    result = gp.check(gp.load(dyn, fold=False), res.model, res.plan)
    assert result.ok and not result.refused, result.summary()


def test_large_model_oracle_masks_zero_points_on_disk(qmodels, tmp_path, monkeypatch):
    """`check_files` (the oracle of models too large for memory) builds the masked original
    on disk, external data included: the same zero-point masking as in memory."""
    check_files_needs_zero_points(qmodels[("mlp", False, "QUInt8")], tmp_path, monkeypatch)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_qdq_transformer_prunes_heads_and_ffn_like_the_float_one(name, tmp_path):
    """Attention heads (LLaMA: GQA KV groups) and FFN channels are found through the Q/DQ
    pairs exactly as in the float model, and prune under the oracle."""
    pytest.importorskip("transformers")
    from zoo.hf_models import export_hf

    src = export_hf(name, str(tmp_path / f"{name}.onnx"), False)
    q = quantized(src, tmp_path / f"{name}_qdq.onnx", per_channel=True)
    fg, qg = gp.analyze(src).prunable_groups, gp.analyze(q).prunable_groups
    float_atoms = sorted(g.num_atoms for g in fg)
    assert sorted(g.num_atoms for g in qg) == float_atoms
    assert [g.name for g in qg] == [g.name for g in fg]  # named by their layers, not by a weight's DequantizeLinear
    res = gp.prune(q, 0.5, round_to=1)  # tiny widths: no multiple of the host's lanes
    assert len(res.plan.groups) == len(float_atoms) and all(g["removed_atoms"] for g in res.plan.groups)
    result = gp.check(gp.load(q, fold=False), res.model, res.plan)
    assert result.ok and not result.refused, result.summary()
    before, after = initializers(q), {v.name: v.const_value.numpy() for v in res.model.graph.initializers.values()}
    shrunk = [n for n in before if before[n].dtype == np.int8 and after.get(n) is not None
              and after[n].size < before[n].size]
    assert shrunk


def _three_term_sum(left_first: bool, out_scale: float = 0.2, dq_out_scale: str = "s_out",
                    extra: tuple = ()) -> ir.Model:
    """y = Q/DQ(a + b + c) of three Q/DQ'd inputs (int8, scale 0.1), summed as (a+b)+c or
    a+(b+c): the same model up to float rounding, as a pruned layer summing fewer terms in
    another order is to its masked original. An output scale of 0.2 puts every odd multiple
    of 0.1 on a rounding boundary of the output QuantizeLinear, where the last bit of the sum
    decides the step. `dq_out_scale`: the tensor the last DequantizeLinear reads as its
    scale (made by `extra` nodes, or another initializer: a wrongly wired model)."""
    from onnx import TensorProto, helper

    inits = [helper.make_tensor("s_in", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("s_out", TensorProto.FLOAT, [], [out_scale]),
             helper.make_tensor("s_pow", TensorProto.FLOAT, [], [0.125]),
             helper.make_tensor("zp", TensorProto.INT8, [], [0])]
    nodes = list(extra)
    for x in "abc":
        nodes += [helper.make_node("QuantizeLinear", [x, "s_in", "zp"], [f"{x}_q"], name=f"q_{x}"),
                  helper.make_node("DequantizeLinear", [f"{x}_q", "s_in", "zp"], [f"{x}_f"], name=f"dq_{x}")]
    first, second = (("a_f", "b_f"), ("ab", "c_f")) if left_first else (("b_f", "c_f"), ("a_f", "ab"))
    nodes += [helper.make_node("Add", list(first), ["ab"], name="add1"),
              helper.make_node("Add", list(second), ["t"], name="add2"),
              helper.make_node("QuantizeLinear", ["t", "s_out", "zp"], ["t_q"], name="q_t"),
              helper.make_node("DequantizeLinear", ["t_q", dq_out_scale, "zp"], ["y"], name="dq_t")]
    vi = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4096]) for x in "abc"]
    graph = helper.make_graph(nodes, "sum3", vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096])],
                              initializer=inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _sum_inputs() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{x: rng.uniform(-3, 3, 4096).astype(np.float32) for x in "abc"}]


def test_a_quantisation_step_from_float_rounding_passes_on_power_of_two_scales():
    """A QDQ model whose float sums round differently (summation order) flips QuantizeLinear
    steps without any pruning error: the oracle judges it again with power-of-two scales,
    where the sums are exact, and PASSes saying how far apart the models are at their own
    scales. (An ORT-quantized ResNet-18 pruned exactly was one output step apart: exit 3.)"""
    ref, other = _three_term_sum(True), _three_term_sum(False)
    plan = gp.Plan(tensors=[], groups=[])
    as_is = oracle._check(ref, other, plan, inputs=_sum_inputs(), n_random=0)
    assert not as_is.ok and as_is.worst_relative > 1e-2  # the precondition: rounding alone flips steps here
    res = oracle.check(ref, other, plan, inputs=_sum_inputs(), n_random=0)
    assert res.ok, res.summary()
    assert "power of two" in res.tolerance_note and f"{as_is.worst_relative:.2e}" in res.tolerance_note


def test_a_wrong_scale_in_the_same_power_of_two_cell_still_fails(monkeypatch):
    """Power-of-two rounding blurs a scale's low bits (0.2 and 0.201 both become 1/4):
    a pruned model with a wrong scale is equal on that run, and only the check that its
    scales are the input's sliced as planned catches it."""
    ref, wrong = _three_term_sum(True), _three_term_sum(False, out_scale=0.201)
    plan = gp.Plan(tensors=[], groups=[])
    assert not oracle.check(ref, wrong, plan, inputs=_sum_inputs(), n_random=0).ok
    monkeypatch.setattr(oracle, "_scales_as_planned", lambda *a: True)
    assert oracle.check(ref, wrong, plan, inputs=_sum_inputs(), n_random=0).ok  # what the scale check prevents


@pytest.mark.parametrize("wiring", ["another scale of the same cell", "a scale made by an Identity"])
def test_a_rewired_scale_that_the_power_of_two_run_blurs_fails(wiring):
    """Output scale 0.12 and input scale 0.1 both round to 1/8. A pruned model whose last
    DequantizeLinear reads the input's scale instead (17% off), or a power-of-two scale (4% off)
    through an Identity (never rounded, not a constant), is equal on the power-of-two run;
    a scale check by tensor name let both PASS (found by an adversarial helper)."""
    from onnx import helper

    ref = _three_term_sum(True, out_scale=0.12)
    wrong = (_three_term_sum(True, out_scale=0.12, dq_out_scale="s_in") if wiring.startswith("another") else
             _three_term_sum(True, out_scale=0.12, dq_out_scale="s_id",
                             extra=(helper.make_node("Identity", ["s_pow"], ["s_id"], name="id"),)))
    plan = gp.Plan(tensors=[], groups=[])
    res = oracle.check(ref, wrong, plan, inputs=_sum_inputs(), n_random=0)
    assert not res.ok and res.worst_relative > 1e-2, res.summary()  # 17% and 4% off


def test_scales_as_planned_follows_the_plan_slices(qmodels):
    """The scale check compares each per-channel scale with the input's at the kept indices:
    right for the pruned model, wrong once a kept scale is swapped for a removed one."""
    src, res = _pruned(qmodels, ("cnn", True, "QInt8"))
    original = gp.load(src, fold=False)
    assert oracle._scales_as_planned(original, res.model, res.plan)
    entry = next(t for t in res.plan.tensors if t["name"] == "c1.w_scale")
    full = initializers(src)["c1.w_scale"]
    swapped = np.delete(full, entry["removed"])
    swapped[0] = full[entry["removed"][0]]
    res.model.graph.initializers["c1.w_scale"].const_value = ir.tensor(swapped, name="c1.w_scale")
    assert not oracle._scales_as_planned(original, res.model, res.plan)


def test_an_integer_weight_read_with_two_zero_points_is_frozen_not_an_error():
    """One int8 weight read by two MatMulIntegers with different zero points has no single
    masking value (graphprune.ir.quant.masking_fill): the run stopped with exit 2 ('cannot
    mask a slice of a quantized constant'); its columns are frozen instead."""
    from onnx import TensorProto, helper

    from helpers import make_model

    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"]),
             n("MatMulInteger", ["q", "w", "qz", "za"], ["ia"]), n("MatMulInteger", ["q", "w", "qz", "zb"], ["ib"]),
             n("Add", ["ia", "ib"], ["i"]), n("Cast", ["i"], ["f"], to=TensorProto.FLOAT), n("Mul", ["f", "qs"], ["h"]),
             n("Relu", ["h"], ["r"]), n("MatMul", ["r", "w2"], ["y"])]
    m = make_model(nodes, [("x", [4, 16])], [("y", [4, 8])],
                   {"w": rng.integers(-50, 50, (16, 32)).astype(np.int8), "za": np.int8(0), "zb": np.int8(3),
                    "w2": rng.standard_normal((32, 8)).astype(np.float32)})
    dg = gp.analyze(m.SerializeToString())
    assert 32 not in [g.num_atoms for g in dg.prunable_groups]
    assert any("no single value of a removed slice" in r for f in dg.frozen_groups for r in f.reasons)
    res = gp.prune(m.SerializeToString(), 0.5, round_to=1)  # raised PlanError before
    assert gp.check(m.SerializeToString(), res.model, res.plan).ok
