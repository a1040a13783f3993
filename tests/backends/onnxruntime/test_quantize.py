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
    # every conv weight is int8 with one scale per output channel (axis 0)
    proto = onnx.load(str(res.path))
    inits = {t.name: t for t in proto.graph.initializer}
    conv_w = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
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
