"""Malformed-model generators for the CLI fuzz test (not collected by pytest)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samples.make_samples import tiny_mobilenet, tiny_resnet

BASES = {"tiny_resnet": tiny_resnet, "tiny_mobilenet": tiny_mobilenet}
_CACHE: dict[str, bytes] = {}


def base_bytes(name: str) -> bytes:
    if name not in _CACHE:
        _CACHE[name] = BASES[name]().SerializeToString()
    return _CACHE[name]


def _mutate_structure(m: onnx.ModelProto, rng: np.random.Generator) -> str:
    g = m.graph
    kind = rng.integers(0, 14)
    nodes = list(g.node)
    node = nodes[int(rng.integers(0, len(nodes)))]
    if kind == 0:
        g.node.remove(node)
        return "remove node"
    if kind == 1 and node.input:
        node.input[int(rng.integers(0, len(node.input)))] = "does_not_exist"
        return "dangling input"
    if kind == 2:
        later = nodes[int(rng.integers(0, len(nodes)))]
        if later.output and node.input:
            node.input[0] = later.output[0]
        return "maybe cycle"
    if kind == 3 and g.initializer:
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        arr = numpy_helper.to_array(t)
        if arr.ndim:
            arr = arr[: max(0, arr.shape[0] - int(rng.integers(1, 3)))]
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        return "weight shape mismatch / zero-size"
    if kind == 4:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.INT:
                a.i = int(rng.choice([0, -1, 3, 7, 1000]))
            elif a.type == onnx.AttributeProto.INTS and a.ints:
                a.ints[0] = int(rng.choice([0, -2, 5, 99]))
        return "weird attribute"
    if kind == 5 and len(nodes) > 1:
        nodes[1].output[0] = nodes[0].output[0] if nodes[0].output else "x"
        return "duplicate output name"
    if kind == 6:
        m.opset_import[0].version = int(rng.choice([1, 5, 9, 10, 30, 99]))
        return "odd opset"
    if kind == 7 and g.initializer:
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        arr = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array((arr * 10).astype(np.int32), t.name))
        return "integer weights"
    if kind == 8:
        g.output[0].name = "nowhere"
        return "missing graph output"
    if kind == 9:
        node.op_type = str(rng.choice(["Frobnicate", "Conv", "Relu", "Softmax"]))
        return "wrong op type"
    if kind == 10:
        node.domain = "unknown.domain"
        return "unknown domain without opset"
    if kind == 11:
        for n in g.node:
            for i, name in enumerate(n.output):
                if name and rng.random() < 0.5:
                    new = name + " wéird/ñame:0"
                    for other in g.node:
                        for j, x in enumerate(other.input):
                            if x == name:
                                other.input[j] = new
                    for o in g.output:
                        if o.name == name:
                            o.name = new
                    n.output[i] = new
        return "odd names"
    if kind == 12:
        q = helper.make_node("QuantizeLinear", [g.input[0].name, "qs", "qz"], ["q_out"])
        g.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "qs"),
                              numpy_helper.from_array(np.array(0, np.uint8), "qz")])
        dq = helper.make_node("DequantizeLinear", ["q_out", "qs", "qz"], ["dq_out"])
        for n in g.node:
            for j, x in enumerate(n.input):
                if x == g.input[0].name:
                    n.input[j] = "dq_out"
        g.node.insert(0, dq)
        g.node.insert(0, q)
        return "quantized (QDQ)"
    g.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    return "input dtype mismatch"


def mutate(rng: np.random.Generator) -> tuple[bytes, str]:
    """A damaged or odd model (bytes) and a word on what was done."""
    data = base_bytes(str(rng.choice(list(BASES))))
    how = rng.integers(0, 4)
    if how == 0:
        return data[: int(rng.integers(0, len(data)))], "truncated"
    if how == 1:
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 20))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        return bytes(b), "bytes flipped"
    m = onnx.load_from_string(data)
    what = [_mutate_structure(m, rng) for _ in range(int(rng.integers(1, 3)))]
    return m.SerializeToString(), "; ".join(what)
