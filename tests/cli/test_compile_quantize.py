"""`graphprune compile --quantize int8` (graphprune.workflow.quantized): the ONNX Runtime
deployment is the int8 QDQ model of the pruned and repaired one, calibrated on --calib,
reported with its own quality line and latency, gated by --max-drop; refused without
calibration data and with the TVM backend."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune
from graphprune.backends.onnxruntime.quantize import QDQ_OPS, QLINEAR_OPS
from graphprune.cli.main import main
from graphprune.errors import UsageError


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    rng = np.random.default_rng(3)
    np.savez(path, input=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    return path


FAST = ["--criterion", "l2", "--repair", "bias", "--ratio", "0.3"]  # no candidate search: one pruning


def _cosine(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_compile_quantize_int8(samples_dir, calib, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "x86", "--calib", str(calib),
                 "--quantize", "int8", "-o", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "int8 (QDQ" in text and "quantized_int8: PASS" in text and "numerics_onnxruntime: PASS" in text
    # the float gate's figure says where it was measured (the repair fit the rest; it said "on calibration data")
    assert "fidelity: PASS (mean cosine" in text and "on held-back calibration samples" in text
    rep = json.loads((out / "report.json").read_text())
    q = rep["quantization"]
    assert q["mode"] == "int8" and q["format"] == "QDQ" and q["runs_int8"] and q["calibration_batches"] == 16
    assert q["qdq_ops"]["QuantizeLinear"] > 0 and q["qdq_ops"]["DequantizeLinear"] > 0
    # one model per range method, scored by output cosine against the dense input; the best kept
    cands = {r["ranges"]: r["score"] for r in q["range_candidates"]}
    assert set(cands) == {"minmax", "percentile"} and cands[q["ranges"]] == max(cands.values())
    assert "chosen by output cosine vs the dense float input" in q["line"] and f"{q['ranges']} ranges" in q["line"]
    # against the dense float input: the pruning's loss (the float fidelity) plus a little, within --max-drop 0.1
    assert rep["fidelity"]["mean_cosine"] - 0.01 <= q["fidelity"]["mean_cosine"] and q["fidelity"]["drop"] <= 0.1
    assert q["latency_ms"]["int8"] > 0 and q["latency_ms"]["dense_float"] > 0 and q["latency_ms"]["pruned_float"] > 0
    assert q["line"] in (out / "report.md").read_text()
    assert "model.qdq.onnx" in rep["backend"]["results"]["onnxruntime"]["artifacts"]
    # the bytes are the int8 model's (the float pruned model's were shown beside the int8 latency)
    assert rep["after"]["bytes"] == (out / "onnxruntime" / "model.qdq.onnx").stat().st_size
    assert rep["after"]["bytes"] < 0.5 * rep["after"]["pruned_float_bytes"]
    # the deployment holds int8 ops, runs in ORT, and stays close to the float pruned model on new inputs
    deployed = out / "onnxruntime" / "model.onnx"
    ops = {n.op_type for n in onnx.load(str(deployed)).graph.node}
    assert ops & set(QDQ_OPS + QLINEAR_OPS)
    s_int8, s_float = ort.InferenceSession(str(deployed)), ort.InferenceSession(str(out / "model.pruned.onnx"))
    rng = np.random.default_rng(11)
    cos = [_cosine(s_int8.run(None, x)[0], s_float.run(None, x)[0])
           for x in ({"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8))]
    assert np.mean(cos) >= 0.99


def test_quantize_needs_calibration_data(samples_dir, tmp_path, capsys):
    out = tmp_path / "nocalib"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--quantize", "int8", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--quantize int8 needs calibration data (--calib)" in err and not out.exists()
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--quantize", "int8", "--dry-run"]) == 2
    with pytest.raises(UsageError, match="needs calibration data"):
        graphprune.compile(samples_dir / "tiny_resnet.onnx", out=tmp_path / "api", quantize="int8")
    assert not (tmp_path / "api").exists()


def test_quantize_refused_with_tvm(samples_dir, calib, tmp_path, capsys):
    out = tmp_path / "tvm"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--backend", "tvm", "--calib", str(calib),
                 "--quantize", "int8", "-o", str(out)]) == 2
    assert "TVM backend compiles float models only" in capsys.readouterr().err and not out.exists()


def test_quantize_refuses_a_model_with_no_layer_to_quantize(tmp_path, capsys):
    """No float Conv/Gemm/MatMul with a constant weight: refused in words, nothing written
    (ORT's percentile calibration failed with 'Histogram has not been collected')."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    out = tmp_path / "q"
    assert main(["compile", str(src), "--calib", str(tmp_path / "c.npz"), "--calib-batch", "4", "--quantize", "int8",
                 "-o", str(out)]) == 2
    assert "no float Conv, ConvTranspose, Gemm or MatMul with a constant weight" in capsys.readouterr().err
    assert not out.exists()


def test_max_drop_gates_the_int8_deployment(samples_dir, calib, tmp_path, capsys):
    """Not pruned, the float model passes any gate (drop 0); its int8 deployment cannot pass
    a gate of 1e-9, and then nothing is written (exit 3, as the float gate)."""
    out = tmp_path / "gate"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--no-prune", "--calib", str(calib),
                 "--quantize", "int8", "--max-drop", "1e-9", "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "int8 output fidelity drop" in err and not out.exists()
    # nothing was pruned: the hint said "prune less" (new-user probe); the drop is int8's
    assert "drop --quantize (nothing was pruned: the drop is int8's)" in err and "prune less" not in err


def test_quantize_ranges_scored_by_the_user_score(samples_dir, calib, tmp_path, capsys):
    score = tmp_path / "myscore.py"
    score.write_text("import numpy as np\n"
                     "def score(session):\n"
                     "    x = np.ones((1, 3, 16, 16), np.float32)\n"
                     "    return -float(np.abs(session.run(None, {'input': x})[0]).sum())\n")
    out = tmp_path / "q"
    assert main(["compile", str(samples_dir / "tiny_resnet.onnx"), "--target", "x86", "--calib", str(calib),
                 "--quantize", "int8", "--score", f"{score}:score", "-o", str(out), *FAST]) == 0
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert f"chosen by user score {score}:score" in q["line"]
    # the score ran on each candidate (the deployment is the better of the two by it)
    cands = {r["ranges"]: r["score"] for r in q["range_candidates"]}
    assert set(cands) == {"minmax", "percentile"} and all(v < 0 for v in cands.values())
    assert cands[q["ranges"]] == max(cands.values())


def test_int8_and_float_are_timed_under_the_same_session_settings(samples_dir, calib, tmp_path, monkeypatch):
    """"vs pruned float" is the quantization's gain: the pruned float model is timed under the
    int8 deployment's tuned session settings (it was timed under ORT's defaults, so a tuned
    thread count counted as int8 speed), while the dense input keeps ORT's defaults."""
    import graphprune.backends.onnxruntime as ortb

    def tuned(self, model_path, base, feeds, log_fn):
        return {**base, "intra_op_num_threads": 1, "inter_op_num_threads": 1}

    seen = []

    def measure(path, cfg, feeds, repeats=15, budget_s=3.0):
        seen.append((str(path), cfg["intra_op_num_threads"]))
        return 1.0

    monkeypatch.setattr(ortb.OrtBackend, "_tune_session", tuned)
    monkeypatch.setattr(ortb, "measure", measure)
    out = tmp_path / "q"
    src = samples_dir / "tiny_resnet.onnx"
    assert main(["compile", str(src), "--target", "x86", "--calib", str(calib), "--quantize", "int8",
                 "-o", str(out), *FAST]) == 0
    threads = {p: t for p, t in seen}
    pruned = next(p for p in threads if p.endswith("model.pruned.onnx"))
    deployed = next(p for p in threads if p.endswith("model.onnx") and "onnxruntime" in p)
    assert threads[pruned] == threads[deployed] == 1 and threads[str(src)] in (0, 1)
    assert (str(src), 0) in seen  # the dense input under ORT's defaults, as a user would run it
