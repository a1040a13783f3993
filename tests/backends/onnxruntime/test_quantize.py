"""graphprune.backends.onnxruntime.quantize: ORT static int8 quantization (QDQ, per-channel
weights) calibrated on graphprune calibration batches."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphprune.backends.onnxruntime.quantize import CalibrationReader, is_quantized, op_counts, quantize_int8
from graphprune.errors import UsageError


def _feeds(n: int, seed: int, scale: float = 1.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input": (scale * rng.standard_normal((1, 3, 16, 16))).astype(np.float32)} for _ in range(n)]


def _mean_cosine(ref_path, got_path, feeds) -> float:
    a_s, b_s = ort.InferenceSession(str(ref_path)), ort.InferenceSession(str(got_path))
    cos = []
    for f in feeds:
        a, b = a_s.run(None, f)[0].ravel().astype(np.float64), b_s.run(None, f)[0].ravel().astype(np.float64)
        cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(cos))


def test_reader_feeds_model_inputs_by_range_and_again():
    batches = [{"input": np.full((1, 2), k, np.float32), "extra": np.zeros(1)} for k in range(5)]
    r = CalibrationReader(lambda: iter(batches), ["input"])
    assert len(r) == 5
    got = [r.get_next() for _ in range(6)]
    assert [g["input"][0, 0] for g in got[:5]] == [0, 1, 2, 3, 4] and got[5] is None
    assert all(set(g) == {"input"} for g in got[:5])  # only the model's inputs reach ORT
    r.set_range(start_index=2, end_index=4)
    assert [r.get_next()["input"][0, 0] for _ in range(2)] == [2, 3] and r.get_next() is None
    r.rewind()
    assert r.get_next()["input"][0, 0] == 0
    with pytest.raises(UsageError, match="lacks the model input"):
        CalibrationReader(lambda: iter(batches), ["input", "mask"]).get_next()


def test_int8_qdq_per_channel_runs_and_stays_close(samples_dir, tmp_path):
    src = samples_dir / "tiny_resnet.onnx"
    calib = _feeds(8, seed=0)
    res = quantize_int8(src, lambda: iter(calib), tmp_path / "q.onnx")
    assert res.batches == 8 and res.ops["QuantizeLinear"] > 0 and res.ops["DequantizeLinear"] > 0
    assert is_quantized(op_counts(res.path)) and not is_quantized(op_counts(src))
    # the first and the last weighted layer stay float; every other conv weight is int8 with
    # one scale per output channel (axis 0)
    proto = onnx.load(str(res.path))
    kept = res.settings["float_layers"]
    assert len(kept) == 2 and all(n.name in kept for n in proto.graph.node if n.op_type in ("Conv", "Gemm")
                                  and n.input[1] in {t.name for t in proto.graph.initializer})
    inits = {t.name: t for t in proto.graph.initializer}
    conv_w = {n.input[1] for n in proto.graph.node if n.op_type == "Conv" and n.name not in kept}
    dq_w = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_w]
    assert len(dq_w) == len(conv_w) > 0
    for n in dq_w:
        w, scale = inits[n.input[0]], inits[n.input[1]]
        assert w.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [w.dims[0]] and w.dims[0] > 1
    # it runs in ORT and stays close to the float model on inputs it was not calibrated on
    held = _feeds(8, seed=1)
    assert _mean_cosine(src, res.path, held) >= 0.99


def test_the_cosine_bound_catches_wrong_ranges(samples_dir, tmp_path):
    """Activation ranges calibrated on inputs 100x too small clip every real activation:
    the bound the test above uses must reject that model."""
    src = samples_dir / "tiny_resnet.onnx"
    bad = _feeds(8, seed=0, scale=0.01)
    res = quantize_int8(src, lambda: iter(bad), tmp_path / "bad.onnx")
    assert _mean_cosine(src, res.path, _feeds(8, seed=1)) < 0.99


def test_no_batch_is_refused(samples_dir, tmp_path):
    with pytest.raises(UsageError, match="no batch"):
        quantize_int8(samples_dir / "tiny_resnet.onnx", lambda: iter([]), tmp_path / "none.onnx")


def _opset12_convs(path):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    nodes, inits, prev = [], [], "input"
    for k, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 8), (8, 4)]):
        inits += [numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3, f"w{k}"),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, f"b{k}")]
        nodes += [helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
        prev = f"r{k}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)], ir_version=8), str(path))


def test_opset_below_13_is_converted_for_per_channel_scales(tmp_path):
    """Per-channel DequantizeLinear (`axis`) needs opset 13: an opset-12 model (PP-OCRv4 rec is
    one) is converted first, so the QDQ model is valid and still per channel."""
    src = tmp_path / "o12.onnx"
    _opset12_convs(src)
    res = quantize_int8(src, lambda: iter(_feeds(4, seed=0)), tmp_path / "o12q.onnx")
    assert any("opset 12 to 13" in n for n in res.notes) and res.settings["weights"].startswith("per-channel")
    onnx.checker.check_model(str(res.path))
    proto = onnx.load(str(res.path))
    axes = [a.i for n in proto.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes and res.settings["float_layers"] == ["conv0", "conv3"]
    assert _mean_cosine(src, res.path, _feeds(4, seed=1)) >= 0.99


def _with_outlier(n: int, amplitude: float) -> list[dict]:
    feeds = _feeds(n, seed=0)
    feeds[3]["input"][0, 0, 5, 5] = amplitude  # one input pixel far outside every other value
    return feeds


def test_range_method_is_chosen_by_the_score(samples_dir, tmp_path):
    """One outlier in the calibration data stretches MinMax ranges for every real input;
    Percentile ranges clip it. Both models are built and scored, the better one is kept,
    and the choice follows the score, not a fixed preference."""
    src = samples_dir / "tiny_resnet.onnx"
    calib = _with_outlier(16, 100.0)
    normal = _feeds(8, seed=1)
    res = quantize_int8(src, lambda: iter(calib), tmp_path / "p.onnx", score=lambda p: _mean_cosine(src, p, normal))
    scores = {r["ranges"]: r["score"] for r in res.candidates}
    assert set(scores) == {"minmax", "percentile"} and res.batches == 16
    assert res.settings["ranges"] == "percentile" and scores["percentile"] > scores["minmax"] + 0.005
    assert res.candidates[0]["ranges"] == "percentile"
    # the kept file is the scored one: its cosine on the same data is the percentile score
    assert abs(_mean_cosine(src, res.path, normal) - scores["percentile"]) < 1e-6
    # scored on the outlier batch itself, the range that covers it wins
    res2 = quantize_int8(src, lambda: iter(calib), tmp_path / "m.onnx",
                         score=lambda p: _mean_cosine(src, p, [calib[3]]))
    scores2 = {r["ranges"]: r["score"] for r in res2.candidates}
    assert res2.settings["ranges"] == "minmax" and scores2["minmax"] > scores2["percentile"], scores2


def test_without_a_score_one_model_is_built(samples_dir, tmp_path, capsys):
    res = quantize_int8(samples_dir / "tiny_resnet.onnx", lambda: iter(_feeds(4, seed=0)), tmp_path / "q.onnx")
    assert [r["ranges"] for r in res.candidates] == ["minmax"] and "score" not in res.candidates[0]
    with pytest.raises(ValueError, match="range methods"):
        quantize_int8(samples_dir / "tiny_resnet.onnx", lambda: iter(_feeds(4, seed=0)), tmp_path / "x.onnx",
                      methods=("median",))
    quantize_int8(samples_dir / "tiny_resnet.onnx", lambda: iter(_feeds(4, seed=0)), tmp_path / "h.onnx",
                  score=lambda p: 1.0)
    assert capsys.readouterr().out == ""  # ORT's histogram progress prints do not reach graphprune's stdout


def _dynamic_convs(path):
    """Three 3x3 convs (so one is quantized between the float first and last) on an input
    whose batch, height and width are all dynamic."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(3):
        inits.append(numpy_helper.from_array((0.3 * rng.standard_normal((4, 4 if k else 3, 3, 3))).astype(np.float32),
                                             f"w{k}"))
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
        x = f"r{k}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", 4, "h", "w"])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_percentile_ranges_take_uneven_batches_and_say_when_sizes_differ(tmp_path):
    """ORT's histogram calibration stacks every batch's activations into one array: a last,
    partial batch (10 samples in batches of 4) crashed it with numpy's 'inhomogeneous shape'
    ValueError, and so did images of several sizes. Uneven batches are now fed sample by
    sample (both range methods built and scored); samples of several sizes get MinMax
    ranges only, and the result says why."""
    src = _dynamic_convs(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    uneven = [{"x": rng.standard_normal((b, 3, 8, 8)).astype(np.float32)} for b in (4, 4, 2)]
    res = quantize_int8(src, lambda: iter(uneven), tmp_path / "u.onnx", score=lambda p: _mean_cosine(src, p, [
        {"x": u["x"][:1]} for u in uneven]))
    assert {r["ranges"] for r in res.candidates} == {"minmax", "percentile"} and not res.notes
    assert is_quantized(op_counts(res.path))
    sizes = [{"x": rng.standard_normal((2, 3, 8, w)).astype(np.float32)} for w in (8, 12, 8)]
    res = quantize_int8(src, lambda: iter(sizes), tmp_path / "s.onnx", score=lambda p: 1.0)
    assert [r["ranges"] for r in res.candidates] == ["minmax"] and res.batches == 3
    assert any("percentile ranges not built: the calibration samples differ in size" in n for n in res.notes)
