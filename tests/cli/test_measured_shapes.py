"""Issue 13 §1: one representative input shape per run, used for every figure. The shape is
resolved once (--input-shape, else the calibration data's shapes, else static dims, else a
per-kind default), the prune summary and inspect say which, and MACs are counted there —
not with symbolic dims counted as 1."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from graphprune.analysis.cost import layer_macs, model_cost
from graphprune.cli.main import main
from tests.helpers import make_model, w

PER_PIXEL = 8 * 3 * 9 + 8 * 8 * 9  # two 3x3 convs (3->8, 8->8), same padding: MACs per output pixel


def _two_convs(path, dims=("N", 3, "H", "W")):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    out = [dims[0], 8, dims[2], dims[3]] if dims is not None else None
    m = make_model(nodes, [("x", list(dims) if dims is not None else None)], [("y", out)], {"w1": w(8, 3, 3, 3, seed=1), "w2": w(8, 8, 3, 3, seed=2)},
                   check=dims is not None)  # the checker's full check wants input shapes
    path.write_bytes(m.SerializeToString())
    return path


def _calib(path, h, w_):
    np.savez(path, x=np.random.default_rng(0).standard_normal((2, 3, h, w_)).astype(np.float32))
    return path


def _macs_row(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("MACs")).split()[1]


def test_model_cost_counts_macs_at_the_given_shape_and_leaves_the_model_dynamic(tmp_path):
    import graphprune as gp

    model = gp.load(_two_convs(tmp_path / "m.onnx"))
    cost = model_cost(model, {"x": (1, 3, 48, 320)})
    assert cost.macs == PER_PIXEL * 48 * 320 and cost.shapes == {"x": (1, 3, 48, 320)}
    assert sum(layer_macs(model, {"x": (1, 3, 48, 320)}).values()) == cost.macs
    assert [str(d) for d in model.graph.inputs[0].shape] == ["N", "3", "H", "W"]  # the model stays dynamic


def _prune(tmp_path, capsys, model, *extra):
    # about shapes, on a random-weight model: one search candidate, and the quality gate off
    quick = ["--search-budget", "1", "--max-drop", "2"] if "--calib" in extra else []
    assert main(["prune", str(model), "--ratio", "0.5", "--no-bench", "-o", str(tmp_path / "out.onnx"),
                 *map(str, extra), *quick]) == 0
    return capsys.readouterr().out


def test_prune_summary_states_the_shape_flag_over_calib_over_static_over_default(tmp_path, capsys):
    model = _two_convs(tmp_path / "m.onnx")
    calib = _calib(tmp_path / "calib.npz", 16, 24)
    out = _prune(tmp_path, capsys, model, "--input-shape", "x:1,3,32,32", "--calib", calib)
    assert "measured at x: 1×3×32×32 (from --input-shape)" in out
    assert _macs_row(out) == "811K"  # 792 * 32 * 32
    out = _prune(tmp_path, capsys, model, "--calib", calib)
    assert "measured at x: 1×3×16×24 (from --calib)" in out
    assert _macs_row(out) == "304K"  # 792 * 16 * 24
    assert "oracle inputs: x: 1×3×16×24" in out  # the oracle's inputs are the figures' shapes
    static = _two_convs(tmp_path / "static.onnx", dims=(1, 3, 20, 20))
    out = _prune(tmp_path, capsys, static, "--calib", _calib(tmp_path / "c20.npz", 20, 20))
    assert "measured at x: 1×3×20×20 (from --calib)" in out
    out = _prune(tmp_path, capsys, static)
    assert "measured at x: 1×3×20×20 (the model's static dims)" in out and _macs_row(out) == "317K"
    assert main(["prune", str(model), "--dry-run", "--input-shape", "x:1,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert "MACs 811K -> " in out and "measured at x: 1×3×32×32 (from --input-shape)" in out
    out = _prune(tmp_path, capsys, model)
    assert "measured at x: 1×3×224×224 (default for image inputs)" in out
    assert _macs_row(out) == "39.7M"  # 792 * 224 * 224


def test_inspect_counts_macs_per_layer_at_the_input_shape(tmp_path, capsys):
    model = _two_convs(tmp_path / "m.onnx")
    assert main(["inspect", str(model), "--input-shape", "x:1,3,32,32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs"] == PER_PIXEL * 32 * 32
    assert data["measured_at"] == {"x": {"shape": [1, 3, 32, 32], "source": "--input-shape"}}
    assert [r["macs"] for r in data["layers"]] == [8 * 27 * 1024, 8 * 72 * 1024]
    assert main(["inspect", str(model), "--calib", str(_calib(tmp_path / "c.npz", 16, 24))]) == 0
    out = capsys.readouterr().out
    assert "measured at x: 1×3×16×24 (from --calib)" in out and "MACs 304K" in out
    assert "MACs per layer at x:1x3x16x24" in out


def test_an_input_that_declares_no_shape_is_counted_at_the_given_shape(tmp_path, capsys):
    """An input with no declared shape (not even a rank) took no --input-shape: inspect said
    "measured at x: 1×3×32×32" and counted the first conv at 1×1 pixels (216 MACs)."""
    model = _two_convs(tmp_path / "m.onnx", dims=None)
    assert main(["inspect", str(model), "--input-shape", "x:1,3,32,32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs"] == PER_PIXEL * 32 * 32
    assert [r["macs"] for r in data["layers"]] == [8 * 27 * 1024, 8 * 72 * 1024]
    out = _prune(tmp_path, capsys, model, "--calib", _calib(tmp_path / "c.npz", 16, 24))
    # no declared batch axis either: measured at the data's own batch, and said so
    assert "measured at x: 2×3×16×24 (from --calib)" in out and _macs_row(out) == "608K"
    import onnx

    assert not onnx.load(tmp_path / "out.onnx").graph.input[0].type.tensor_type.HasField("shape")  # still none


@pytest.mark.parametrize("verb", ["inspect", "prune"])
@pytest.mark.parametrize("shape,says", [
    ("x:1,3,64,64", "contradicts the model's static shape [1, 3, 16, 16]"),
    ("x:1,3,-1,16", "has a negative or zero size"),
    ("x:1,3,16", "rank 3 given, the input has rank 4"),
    ("y:1,3,16,16", "the model has no input 'y'"),
])
def test_every_verb_refuses_an_input_shape_the_model_cannot_take(tmp_path, capsys, verb, shape, says):
    """inspect counted a static 16x16 model's MACs at 16x16 and printed 'measured at
    1x3x64x64' (and took -1 and 0 sizes); it now refuses what prune refuses, in the same words."""
    model = _two_convs(tmp_path / "m.onnx", dims=(1, 3, 16, 16))
    extra = ["-o", str(tmp_path / "p.onnx")] if verb == "prune" else []
    assert main([verb, str(model), "--input-shape", shape, *extra]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("verb", ["inspect", "prune"])
@pytest.mark.parametrize("shape", ["x:1,3,0,16", "x:0,3,16,16"])
def test_a_zero_size_is_refused_by_every_verb(tmp_path, capsys, verb, shape):
    """inspect printed MACs at 1×3×0×320 (and a batch of 0 gave the batch-1 figure; probe)."""
    model = _two_convs(tmp_path / "m.onnx")
    extra = ["-o", str(tmp_path / "p.onnx")] if verb == "prune" else []
    assert main([verb, str(model), "--input-shape", shape, *extra]) == 2
    assert "has a negative or zero size" in capsys.readouterr().err


def test_a_dynamic_input_takes_any_size_of_its_symbolic_dims(tmp_path, capsys):
    model = _two_convs(tmp_path / "m.onnx")
    for h, w_ in ((16, 24), (40, 8)):
        assert main(["inspect", str(model), "--input-shape", f"x:1,3,{h},{w_}", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["macs"] == PER_PIXEL * h * w_


def _flatten_into_gemm(path):
    """A conv flattened into a Gemm whose weight fixes the spatial size at 4x4, declared
    with dynamic H and W: it runs at 4x4 only (at any batch)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    m = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", ["N", 5])],
                   {"w1": w(8, 3, 3, 3, seed=1), "w2": w(5, 8 * 4 * 4, seed=2)})
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["--input-shape", "--calib"])
def test_a_size_a_dynamic_model_cannot_run_at_is_the_user_s_error_in_words(tmp_path, capsys, how):
    """Dynamic H and W, but a Flatten into a Gemm fixes them: analysed at 6x6 (from
    --input-shape or the calibration data) prune failed with an IR violation of the
    pipeline's input or an 'internal error' from ONNX Runtime; it is now a usage error
    before any work, naming the size, and nothing is written. At 4x4 it prunes."""
    model = _flatten_into_gemm(tmp_path / "m.onnx")
    out = tmp_path / "p.onnx"
    flag = ["--input-shape", "x:2,3,6,6"] if how == "--input-shape" else ["--calib", str(_calib(tmp_path / "c.npz", 6, 6))]
    assert main(["prune", str(model), *flag, "-o", str(out), "--criterion", "l2", "--repair", "none"]) == 2
    err = capsys.readouterr().err
    assert "the model does not run at x: 2×3×6×6" in err and "Gemm" in err and "internal error" not in err
    assert not out.exists()
    good = ["--input-shape", "x:2,3,4,4"] if how == "--input-shape" else ["--calib", str(_calib(tmp_path / "c.npz", 4, 4))]
    assert main(["prune", str(model), *good, "-o", str(out), "--criterion", "l2", "--repair", "none"]) == 0
    assert "oracle PASS" in capsys.readouterr().out


def test_compile_summary_and_report_state_the_shape_the_macs_are_at(tmp_path, capsys):
    model = _two_convs(tmp_path / "m.onnx")
    calib = _calib(tmp_path / "calib.npz", 16, 24)
    assert main(["compile", str(model), "--target", "x86-avx2", "--backend", "onnxruntime", "--ratio", "0.5",
                 "--calib", str(calib), "-o", str(tmp_path / "c"), "--search-budget", "1", "--max-drop", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured at x: 1×3×16×24 (from --calib)" in out
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    assert rep["input_shapes"] == {"x": {"shape": [1, 3, 16, 24], "source": "calibration data"}}
    assert "- measured at x: 1×3×16×24 (from --calib)" in (tmp_path / "c" / "report.md").read_text()
    assert rep["before"]["macs"] == PER_PIXEL * 16 * 24
    assert sum(r["macs_before"] for r in rep["layers"]) == rep["before"]["macs"]
    assert sum(r["macs_after"] for r in rep["layers"]) == rep["after"]["macs"]


def _after_an_op_without_shapes(path):
    """MatMul -> com.microsoft::Trilu (no shape computed for it) -> MatMul -> Relu -> MatMul:
    the two layers after it have no shapes, so their MACs cannot be counted."""
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             helper.make_node("Trilu", ["h0"], ["t"], domain="com.microsoft", upper=1, name="tri"),
             helper.make_node("MatMul", ["t", "w1"], ["h1"], name="mm1"),
             helper.make_node("Relu", ["h1"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    m = make_model(nodes, [("x", ["b", 16, 16])], [("y", ["b", 16, 8])],
                   {"w0": w(16, 16, seed=1), "w1": w(16, 32, seed=2), "w2": w(32, 8, seed=3)}, check=False)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path.write_bytes(m.SerializeToString())
    return path


def test_layers_whose_shapes_are_unknown_are_said_not_counted(tmp_path, capsys):
    """MACs counted as 0 for a layer without shapes made every MAC figure silently low (an
    ORT-optimized MiniLM printed 20M for 344M): inspect, the prune summary, its report and
    --json name those layers and call the figures lower bounds."""
    model = _after_an_op_without_shapes(tmp_path / "m.onnx")
    cost = model_cost(__import__("graphprune").load(str(model)), {"x": [1, 16, 16]})
    assert cost.uncounted == ["mm1", "mm2"] and cost.macs == 16 * 16 * 16
    line = ("MACs: 2 layer(s) not counted, their shapes unknown or their op not one graphprune counts (mm1, mm2): "
            "the MAC figures are lower bounds")
    assert main(["inspect", str(model)]) == 0
    assert line in capsys.readouterr().out
    out = tmp_path / "p.onnx"
    assert main(["prune", str(model), "--ratio", "0.3", "--no-bench", "-o", str(out)]) == 0
    assert line in capsys.readouterr().out
    report = json.loads((tmp_path / "p.report.json").read_text())
    assert report["macs_uncounted"] == ["mm1", "mm2"] and line in report["red"]
    assert main(["prune", str(model), "--ratio", "0.3", "--no-bench", "-o", str(tmp_path / "q.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs_uncounted"] == ["mm1", "mm2"]


def test_an_op_that_multiplies_but_is_not_counted_is_said(tmp_path):
    """ONNX Runtime's offline-optimised files (compile's onnxruntime/model.onnx) hold
    com.microsoft.nchwc::Conv and com.microsoft::FusedGemm: inspect printed 480 MACs for
    such a deployment without a word."""
    nodes = [helper.make_node("FusedGemm", ["x", "w0"], ["h"], domain="com.microsoft", name="fused", activation="Relu"),
             helper.make_node("MatMul", ["h", "w1"], ["y"], name="mm")]
    m = make_model(nodes, [("x", [2, 16])], [("y", [2, 8])], {"w0": w(16, 16, seed=1), "w1": w(16, 8, seed=2)},
                   check=False)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model = __import__("graphprune").load(m.SerializeToString())
    assert model_cost(model).uncounted == ["fused", "mm"]  # (mm: no shape after an op onnx does not know)


def test_a_model_whose_shapes_are_all_known_has_no_such_line(tmp_path, capsys):
    model = _two_convs(tmp_path / "m.onnx")
    assert model_cost(__import__("graphprune").load(str(model)), {"x": [1, 3, 8, 8]}).uncounted == []
    assert main(["inspect", str(model)]) == 0
    assert "not counted" not in capsys.readouterr().out


def test_check_runs_at_the_shapes_the_prune_run_verified_at(tmp_path, capsys):
    """check of a prune result ran at the default size (PP-OCR rec verified at 1×3×48×320 was
    checked at 64×256; probe): it takes the shapes of the run's report beside the model,
    unless --input-shape gives others, and only a report of that model."""
    model = _two_convs(tmp_path / "m.onnx")
    out = tmp_path / "p.onnx"
    assert main(["prune", str(model), "--ratio", "0.5", "--round-to", "1", "--input-shape", "x:1,3,24,32",
                 "--no-bench", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(model), str(out)]) == 0
    assert "random inputs at x: 1×3×24×32 (the prune run's, from p.report.json)" in capsys.readouterr().out
    assert main(["check", str(model), str(out), "--input-shape", "x:1,3,8,8"]) == 0
    assert "random inputs at x: 1×3×8×8 (--input-shape)" in capsys.readouterr().out
    copy = tmp_path / "copy.onnx"  # no report of its own: the default shapes
    copy.write_bytes(out.read_bytes())
    (tmp_path / "copy.report.json").write_text((tmp_path / "p.report.json").read_text())  # another model's report
    assert main(["check", str(model), str(copy), "--plan", str(tmp_path / "p.plan.json")]) == 0
    assert "the prune run's" not in capsys.readouterr().out


def test_calibration_values_the_model_cannot_take_are_not_blamed_on_the_size(tmp_path, capsys):
    """Token ids past the vocabulary (97 in a 97-row table) made the model fail on the data's
    first batch, and the hint said 'give calibration data at a size the model takes': the
    size was fine, the values were not."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    m = make_model(nodes, [helper.make_tensor_value_info("ids", 7, ["B", "S"])], [("y", ["B", "S", 4])],
                   {"table": w(97, 8, seed=1), "w1": w(8, 16, seed=2), "w2": w(16, 4, seed=3)})
    model = tmp_path / "m.onnx"
    model.write_bytes(m.SerializeToString())
    np.savez(tmp_path / "c.npz", ids=np.random.default_rng(0).integers(0, 120, (8, 6)))
    assert main(["prune", str(model), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "p.onnx"),
                 "--criterion", "l2", "--repair", "none"]) == 2
    err = capsys.readouterr().err
    assert "the model does not run at ids: 8×6 (the calibration data's first batch)" in err
    assert "sizes and values must be ones the model takes" in err and "at a size the model takes" not in err
