"""The dense kernel a user would otherwise run: one layer as a one-node ONNX model (the
layer's Conv or MatMul, with the bias and ReLU TVM fuses into it) in ONNX Runtime, at the
layer's input shape, on this host. The sparse-kernel table reports each chosen kernel
against it as well as against TVM's own dense kernel (issue 13 §3): TVM's dense kernel
can be untuned and much slower than ONNX Runtime's, which flatters a sparse kernel."""
from __future__ import annotations

import time

import numpy as np

RUNS = 7  # median of this many timed runs, after one warm-up run


def layer_model(layer) -> bytes:
    """The ONNX model of `layer` (a rewrite._Layer): x -> Conv/MatMul (+ bias) (+ Relu) -> y."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(layer.weight, np.float32)
    inits, nodes = [], []
    if layer.kind == "conv2d":
        a = layer.conv_attrs
        inits.append(numpy_helper.from_array(w, "w"))
        ins = ["x", "w"]
        if layer.bias is not None:
            inits.append(numpy_helper.from_array(np.asarray(layer.bias, np.float32).reshape(-1), "b"))
            ins.append("b")
        nodes.append(helper.make_node("Conv", ins, ["h"], strides=list(a["strides"]), pads=list(a["padding"]),
                                      dilations=list(a["dilation"]), group=a["groups"]))
    else:  # linear: weight [N, K], y = x @ w.T (+ b)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "w"))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["m"]))
        if layer.bias is not None:
            inits.append(numpy_helper.from_array(np.asarray(layer.bias, np.float32).reshape(-1), "b"))
            nodes.append(helper.make_node("Add", ["m", "b"], ["h"]))
        else:
            nodes[-1].output[0] = "h"
    nodes.append(helper.make_node("Relu", ["h"], ["y"]) if layer.relu else helper.make_node("Identity", ["h"], ["y"]))
    g = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(layer.x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m.SerializeToString()


def ort_dense_ms(layer, threads: int = 0, runs: int = RUNS) -> float:
    """Median latency (ms) of `layer`'s one-node model in ONNX Runtime, CPU, `threads` intra-op
    threads (0: ONNX Runtime's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 4
    sess = ort.InferenceSession(layer_model(layer), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(tuple(int(d) for d in layer.x_shape)).astype(np.float32)
    sess.run(None, {"x": x})
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))
