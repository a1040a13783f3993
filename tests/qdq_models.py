"""Tiny float models and their ORT-quantized (QDQ) versions, for the quantized-input tests
(not collected by pytest)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _w(rng, *shape, scale=0.5):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _model(nodes, x, y, inits, opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(*x)], [helper.make_tensor_value_info(*y)],
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


def float_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> conv 3->8 -> relu -> conv 8->8 -> relu -> global pool -> gemm 8->4."""
    rng = np.random.default_rng(seed)
    inits = {"c1.w": _w(rng, 8, 3, 3, 3), "c1.b": _w(rng, 8), "c2.w": _w(rng, 8, 8, 3, 3, scale=0.2),
             "c2.b": _w(rng, 8), "fc.w": _w(rng, 4, 8), "fc.b": _w(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return _model(nodes, ("x", TensorProto.FLOAT, [1, 3, 8, 8]), ("y", TensorProto.FLOAT, [1, 4]), inits)


def float_mlp(seed: int = 0) -> onnx.ModelProto:
    """A transformer-ish FFN block: x[2,6,16] -> LayerNorm -> MatMul 16->32 + b -> Relu ->
    MatMul 32->16 + b -> + x (residual)."""
    rng = np.random.default_rng(seed)
    inits = {"ln.g": (1 + 0.1 * rng.standard_normal(16)).astype(np.float32), "ln.b": _w(rng, 16, scale=0.1),
             "w1": _w(rng, 16, 32, scale=0.3), "b1": _w(rng, 32, scale=0.1),
             "w2": _w(rng, 32, 16, scale=0.3), "b2": _w(rng, 16, scale=0.1)}
    nodes = [helper.make_node("LayerNormalization", ["x", "ln.g", "ln.b"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             helper.make_node("Relu", ["a1"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["a2"], name="fc2_bias"),
             helper.make_node("Add", ["a2", "x"], ["y"], name="residual")]
    return _model(nodes, ("x", TensorProto.FLOAT, [2, 6, 16]), ("y", TensorProto.FLOAT, [2, 6, 16]), inits)


def float_branches(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,16,16] -> conv 3->8 -> relu -> avgpool 2x2/2 -> (conv 8->6, conv 8->4) -> concat ->
    conv 10->8 -> sigmoid -> global pool -> gemm 8->4: quantized, the pooling, concat and
    sigmoid become QLinearAveragePool, QLinearConcat and QLinearSigmoid."""
    rng = np.random.default_rng(seed)
    inits = {"c1.w": _w(rng, 8, 3, 3, 3), "c1.b": _w(rng, 8), "a.w": _w(rng, 6, 8, 1, 1), "a.b": _w(rng, 6),
             "b.w": _w(rng, 4, 8, 3, 3, scale=0.2), "b.b": _w(rng, 4), "c3.w": _w(rng, 8, 10, 1, 1), "c3.b": _w(rng, 8),
             "fc.w": _w(rng, 4, 8), "fc.b": _w(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("AveragePool", ["r1"], ["p1"], name="p1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "a.w", "a.b"], ["ca"], name="ca"),
             helper.make_node("Conv", ["p1", "b.w", "b.b"], ["cb"], name="cb", pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["ca", "cb"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "c3.w", "c3.b"], ["c3"], name="c3"),
             helper.make_node("Sigmoid", ["c3"], ["s3"], name="s3"),
             helper.make_node("GlobalAveragePool", ["s3"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return _model(nodes, ("x", TensorProto.FLOAT, [1, 3, 16, 16]), ("y", TensorProto.FLOAT, [1, 4]), inits)


FLOAT_MODELS = {"cnn": float_cnn, "mlp": float_mlp}


def calibration_feeds(path, n: int = 4, seed: int = 0) -> list[dict]:
    """Random feeds for every input of the model at `path`: dynamic dims 1 (first) or 8,
    integer inputs (token ids, masks) in [0, 50)."""
    import onnxruntime as ort

    inputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        d = {}
        for i in inputs:
            shape = [x if isinstance(x, int) else (1 if j == 0 else 8) for j, x in enumerate(i.shape)]
            d[i.name] = (rng.integers(0, 50, shape).astype(np.int64) if "int" in i.type
                         else rng.standard_normal(shape).astype(np.float32))
        feeds.append(d)
    return feeds


def quantized(float_model, path, *, per_channel: bool, weight_type: str = "QInt8", fmt: str = "QDQ",
              seed: int = 0) -> str:
    """Write `float_model` (a ModelProto or a path) quantized by
    onnxruntime.quantization.quantize_static (activations uint8, weights `weight_type`,
    calibrated on random data) to `path`; returns the path."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = str(path) + ".float.onnx"
    if isinstance(float_model, onnx.ModelProto):
        onnx.save(float_model, src)
    else:
        src = str(float_model)
    feeds = calibration_feeds(src, seed=seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, str(path), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                    weight_type=getattr(QuantType, weight_type), activation_type=QuantType.QUInt8)
    return str(path)


def dynamic(float_model, path, *, per_channel: bool = False, weight_type: str = "QInt8",
            ops: tuple[str, ...] = ("MatMul",)) -> str:
    """Write `float_model` quantized by onnxruntime.quantization.quantize_dynamic
    (DynamicQuantizeLinear + MatMulInteger / ConvInteger, scales multiplied in after) to
    `path`; returns the path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = str(path) + ".float.onnx"
    onnx.save(float_model, src)
    quantize_dynamic(src, str(path), per_channel=per_channel, weight_type=getattr(QuantType, weight_type),
                     op_types_to_quantize=list(ops))
    return str(path)


def float_cos_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[4,16] -> MatMul 16->32 + b -> Cos -> MatMul 32->8: quantized dynamically, the
    second MatMul's activation range reaches cos(0) = 1 at a masked hidden channel, which
    no kept channel does."""
    rng = np.random.default_rng(seed)
    inits = {"w1": _w(rng, 16, 32), "b1": _w(rng, 32, scale=0.1), "w2": _w(rng, 32, 8)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             helper.make_node("Cos", ["a1"], ["s"], name="act"),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="fc2")]
    return _model(nodes, ("x", TensorProto.FLOAT, [4, 16]), ("y", TensorProto.FLOAT, [4, 8]), inits)


def initializers(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def check_files_needs_zero_points(src, tmp_path, monkeypatch) -> None:
    """Pruned with its weights as external data, the model passes `check_files` (the oracle
    of models too large for memory, masked original built on disk), and fails it when the
    on-disk masking ignores zero points: what both quantized formats' tests assert."""
    import graphprune as gp
    from graphprune.runtime import oracle

    ext = tmp_path / "ext.onnx"
    onnx.save(onnx.load(src), ext, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    res = gp.prune(str(ext), 0.5)
    out = tmp_path / "pruned.onnx"
    gp.save(res.model, out)
    assert oracle.check_files(str(ext), str(out), res.plan).ok
    monkeypatch.setattr(oracle, "_disk_fills", lambda *a: {})
    assert oracle.check_files(str(ext), str(out), res.plan).ok is False
