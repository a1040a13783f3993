"""Integer-op (QOperator) models in (issue 16 §4): models quantized by
onnxruntime.quantization.quantize_static with QuantFormat.QOperator (QLinearConv,
QLinearMatMul, com.microsoft QGemm / QLinearAdd / QLinearGlobalAveragePool; per-channel and
per-tensor weights, int8 and uint8) are pruned in their own format: integer weights, their
per-channel scales and int32 biases sliced together, the model equal to the quantized
original with the removed channels masked (exactly: the masked original sets removed
integers to their zero points, so every removed channel is exactly 0 to its readers)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphprune as gp
from graphprune.cli.main import main
from graphprune.runtime import oracle
from qdq_models import FLOAT_MODELS, check_files_needs_zero_points, float_branches, initializers, quantized

pytest.importorskip("onnxruntime.quantization")

CASES = [(m, pc, wt) for m in FLOAT_MODELS for pc in (True, False) for wt in ("QInt8", "QUInt8")]
INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool"}


@pytest.fixture(scope="module")
def qop(tmp_path_factory):
    d = tmp_path_factory.mktemp("qop")
    return {(m, pc, wt): quantized(FLOAT_MODELS[m](), d / f"{m}_{int(pc)}_{wt}.onnx", per_channel=pc, weight_type=wt,
                                   fmt="QOperator") for m, pc, wt in CASES}


def _weight_params(path) -> dict[str, tuple[str, str, int]]:
    """integer weight -> (scale, zero point, axis its per-channel scale runs along)."""
    m = onnx.load(path)
    out = {}
    for n in m.graph.node:
        if n.op_type == "QLinearConv":
            out[n.input[3]] = (n.input[4], n.input[5], 0)
        elif n.op_type == "QLinearMatMul":
            out[n.input[3]] = (n.input[4], n.input[5], 1)
        elif n.op_type == "QGemm":
            tb = next((a.i for a in n.attribute if a.name == "transB"), 0)
            out[n.input[3]] = (n.input[4], n.input[5], 0 if tb else 1)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'per_channel' if c[1] else 'per_tensor'}-{c[2]}")
def test_integer_op_models_prune_in_their_format_and_pass_the_oracle(qop, case):
    src = qop[case]
    assert INTEGER_OPS & {n.op_type for n in onnx.load(src).graph.node}
    res = gp.prune(src, 0.5)
    assert res.changed and res.plan.tensors
    before = initializers(src)
    after = {v.name: v.const_value.numpy() for v in res.model.graph.initializers.values()}
    planned = {(t["name"], t["axis"]): t["removed"] for t in res.plan.tensors}
    for (name, axis), removed in planned.items():
        assert after[name].shape[axis] == before[name].shape[axis] - len(removed)
        assert after[name].dtype == before[name].dtype  # integers stay integers
    params = _weight_params(src)
    sliced = [(n, ax) for n, ax in planned if n in params]
    assert len({n for n, _ in sliced}) >= 2, "integer weights lost channels"
    for name, _ in sliced:
        scale, zp, axis = params[name]
        if before[scale].size > 1:  # per-channel: cut where the weight's output channels are
            assert planned.get((scale, 0)) == planned.get((zp, 0)) == planned.get((name, axis))
        else:
            assert (scale, 0) not in planned and after[scale].shape == before[scale].shape
    assert {n.op_type for n in res.model.graph} == {n.op_type for n in gp.load(src).graph}  # same format
    result = gp.check(gp.load(src, fold=False), res.model, res.plan)
    assert result.ok and result.worst_relative == 0.0, result.summary()
    from graphprune.analysis.cost import model_cost

    assert model_cost(res.model).params < model_cost(gp.load(src)).params


def test_masking_to_zero_points_is_what_makes_it_exact(qop, monkeypatch):
    """QLinearAdd's uint8 bias has a zero point near 128: a masked original that zeroed its
    integers instead would add (0 - zp) * scale, and the comparison FAILs."""
    src = qop[("mlp", False, "QUInt8")]
    res = gp.prune(src, 0.5)
    original = gp.load(src, fold=False)
    assert gp.check(original, res.model, res.plan).ok
    monkeypatch.setattr(oracle, "_quantized_fill", lambda v: None)
    assert gp.check(original, res.model, res.plan).ok is False


def test_a_mis_sliced_per_channel_scale_is_caught(qop):
    src = qop[("cnn", True, "QUInt8")]
    res = gp.prune(src, 0.5)
    entry = next(t for t in res.plan.tensors if t["name"] == "c1.w_scale")
    scales = initializers(src)["c1.w_scale"]
    kept = np.setdiff1d(np.arange(scales.size), entry["removed"])
    wrong = scales[: len(kept)]
    assert not np.array_equal(wrong, scales[kept])
    res.model.graph.initializers["c1.w_scale"].const_value = ir.tensor(wrong, name="c1.w_scale")
    assert gp.check(gp.load(src, fold=False), res.model, res.plan).ok is False


@pytest.mark.parametrize("per_channel", [True, False])
def test_channels_are_ranked_by_the_dequantized_weights(qop, tmp_path, per_channel, monkeypatch):
    """Per-channel scales make raw integers incomparable across channels (each channel's
    largest weight is quantized to ~127): importance reads (q - zp) * scale, and picks the
    channels the float model's magnitudes pick."""
    import graphprune.importance.magnitude as magnitude

    name = "cnn"
    fpath = tmp_path / "f.onnx"
    onnx.save(FLOAT_MODELS[name](), fpath)
    float_plan = gp.prune(str(fpath), 0.5, criterion="l2").plan
    wanted = {t["name"].replace(".w", ".w_quantized"): t["removed"] for t in float_plan.tensors
              if t["name"] in ("c1.w", "c2.w") and t["axis"] == 0}
    got = {t["name"]: t["removed"] for t in gp.prune(qop[(name, per_channel, "QInt8")], 0.5, criterion="l2").plan.tensors
           if t["name"] in wanted and t["axis"] == 0}
    assert got == wanted
    if per_channel:  # on raw integers the ranking is another one
        monkeypatch.setattr(magnitude, "dequantized_weight", lambda v: magnitude.const_array(v).astype(np.float32))
        raw = {t["name"]: t["removed"] for t in gp.prune(qop[(name, True, "QInt8")], 0.5, criterion="l2").plan.tensors
               if t["name"] in wanted and t["axis"] == 0}
        assert raw != wanted


def test_cli_prunes_checks_and_compiles(qop, tmp_path, capsys):
    """prune + check on the CLI; compile ships the integer model; --quantize int8 of a model
    quantized already is refused before any work."""
    src = qop[("cnn", True, "QUInt8")]
    out = tmp_path / "small.onnx"
    assert main(["prune", src, "--ratio", "0.5", "-o", str(out), "--no-bench"]) == 0
    assert "oracle PASS" in capsys.readouterr().out
    assert main(["check", src, str(out), "--plan", str(tmp_path / "small.plan.json"), "-q"]) == 0
    assert initializers(out)["c2.w_quantized"].dtype == np.int8
    rc = main(["compile", src, "--target", "x86", "-o", str(tmp_path / "c")])
    assert rc == 0, capsys.readouterr().err
    assert {n.op_type for n in onnx.load(str(tmp_path / "c" / "model.pruned.onnx")).graph.node} & INTEGER_OPS
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    rc = main(["compile", src, "--quantize", "int8", "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q")])
    assert rc == 2 and "quantized already" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_large_model_oracle_masks_zero_points_on_disk(qop, tmp_path, monkeypatch):
    """`check_files` (the oracle of models too large for memory) finds the zero points of
    integer-op weights in the proto too."""
    check_files_needs_zero_points(qop[("mlp", False, "QUInt8")], tmp_path, monkeypatch)


def test_activation_scales_that_are_not_per_tensor_freeze(qop, tmp_path):
    """A QLinearAdd whose operand scale has one value per channel is not mapped: the
    channels it touches freeze, with the reason."""
    from onnx import numpy_helper

    from graphprune.analysis.dependency import DependencyGraph

    m = onnx.load(qop[("mlp", False, "QUInt8")])
    add = next(n for n in m.graph.node if n.op_type == "QLinearAdd")
    scale = next(i for i in m.graph.initializer if i.name == add.input[4])
    value = numpy_helper.to_array(scale)
    m.graph.initializer.remove(scale)
    m.graph.initializer.append(numpy_helper.from_array(np.full(32, value, np.float32), add.input[4]))
    onnx.save(m, tmp_path / "bad.onnx")
    dg = DependencyGraph(gp.load(str(tmp_path / "bad.onnx")))
    reasons = {r for g in dg.frozen_groups for r in g.reasons}
    assert any("not one constant per tensor" in r for r in reasons), reasons
    assert not any(g.name.startswith(add.name) for g in dg.prunable_groups)


def test_quantized_shapes_of_microsoft_ops(qop):
    """onnx does not infer com.microsoft ops: their outputs get shapes from the inputs."""
    m = gp.load(qop[("cnn", False, "QInt8")])
    shapes = {n.op_type: list(n.outputs[0].shape) for n in m.graph if n.domain == "com.microsoft"}
    assert shapes == {"QLinearGlobalAveragePool": [1, 8, 1, 1], "QGemm": [1, 4]}


def test_pooling_concat_and_sigmoid_in_integer_ops(tmp_path):
    """QLinearAveragePool (its output shape computed from kernel and strides), QLinearConcat
    (two branches' channels in one tensor) and QLinearSigmoid pass channels: the branches
    and the conv after the concat lose channels, exactly."""
    src = quantized(float_branches(), tmp_path / "br.onnx", per_channel=True, weight_type="QInt8", fmt="QOperator")
    ops = {n.op_type for n in onnx.load(src).graph.node}
    assert {"QLinearAveragePool", "QLinearConcat", "QLinearSigmoid"} <= ops
    m = gp.load(src)
    pool = next(n for n in m.graph if n.op_type == "QLinearAveragePool")
    assert list(pool.outputs[0].shape) == [1, 8, 8, 8]
    cat = next(n for n in m.graph if n.op_type == "QLinearConcat")
    assert list(cat.outputs[0].shape) == [1, 10, 8, 8]
    res = gp.prune(src, 0.5)
    sliced = {t["name"] for t in res.plan.tensors}
    assert {"a.w_quantized", "b.w_quantized", "c3.w_quantized"} <= sliced
    after = {v.name: v.const_value.numpy() for v in res.model.graph.initializers.values()}
    assert after["c3.w_quantized"].shape[1] == after["a.w_quantized"].shape[0] + after["b.w_quantized"].shape[0] < 10
    result = gp.check(gp.load(src, fold=False), res.model, res.plan)
    assert result.ok and result.worst_relative == 0.0, result.summary()


def test_dynamic_integer_model_analysed_at_a_shape_keeps_types(tmp_path):
    """A model with dynamic dims analysed at --input-shape: the com.microsoft outputs that
    only get dims there get their element types too (a value with dims and no type is not
    serialised, which broke every session made from the analysed model)."""
    from graphprune.frontends.onnx import load_onnx

    m = float_branches()
    for v in (m.graph.input[0], m.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_param = "n"
    for k in (2, 3):
        m.graph.input[0].type.tensor_type.shape.dim[k].dim_param = f"s{k}"
    src = quantized(m, tmp_path / "dyn.onnx", per_channel=True, fmt="QOperator")
    model = load_onnx(src, input_shapes={"x": [1, 3, 16, 16]})
    ms = [n for n in model.graph if n.domain == "com.microsoft"]
    assert ms and all(n.outputs[0].shape is not None for n in ms)
    untyped = [v.name for n in model.graph for v in n.outputs if v.shape is not None and v.dtype is None]
    assert not untyped
    res = gp.prune(src, 0.5)
    assert gp.check(gp.load(src, fold=False), res.model, res.plan).ok


def test_repairs_say_once_that_integer_layers_keep_their_error(qop, tmp_path, capsys):
    src = qop[("cnn", True, "QUInt8")]
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    rc = main(["prune", src, "--calib", str(tmp_path / "calib.npz"), "--max-drop", "2", "--no-bench",
               "-o", str(tmp_path / "out.onnx")])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("note: repairs do not rewrite integer-op layers (QGemm, QLinearConv)") == 1, out
    assert initializers(tmp_path / "out.onnx")["c2.w_quantized"].dtype == np.int8


def test_activation_criteria_do_not_read_integer_codes(qop, tmp_path):
    """A group of an integer-op model has no float activation to measure (its tensors are
    uint8 codes around a zero point): activation and apoz rank it by weight magnitude, as
    wanda already did, instead of by the codes' mean."""
    from graphprune.analysis.dependency import DependencyGraph
    from graphprune.importance.registry import group_scores
    from graphprune.runtime.calibration import Calibration

    src = qop[("cnn", True, "QUInt8")]
    model = gp.load(src)
    dg = DependencyGraph(model)
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    calib = Calibration.from_batches([{"x": x[i:i + 4]} for i in (0, 4)], "test")
    l1 = group_scores(dg, "l1")
    for criterion in ("activation", "apoz"):
        got = group_scores(dg, criterion, calibration=calib)
        assert all(np.allclose(got[g], l1[g]) for g in l1), criterion
