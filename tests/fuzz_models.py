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


# Structural mutations, by kind: fn(model, node, nodes, rng) -> what was done, or None when
# it does not apply to this model (the input dtype mismatch is done instead).

def _remove_node(m, node, nodes, rng):
    m.graph.node.remove(node)
    return "remove node"


def _dangling_input(m, node, nodes, rng):
    if not node.input:
        return None
    node.input[int(rng.integers(0, len(node.input)))] = "does_not_exist"
    return "dangling input"


def _maybe_cycle(m, node, nodes, rng):
    later = nodes[int(rng.integers(0, len(nodes)))]
    if later.output and node.input:
        node.input[0] = later.output[0]
    return "maybe cycle"


def _random_initializer(m, rng):
    """One initializer of `m` drawn by `rng`, or None when it has none."""
    inits = m.graph.initializer
    return inits[int(rng.integers(0, len(inits)))] if inits else None


def _shrink_weight(m, node, nodes, rng):
    t = _random_initializer(m, rng)
    if t is None:
        return None
    arr = numpy_helper.to_array(t)
    if arr.ndim:
        arr = arr[: max(0, arr.shape[0] - int(rng.integers(1, 3)))]
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return "weight shape mismatch / zero-size"


def _weird_attribute(m, node, nodes, rng):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.INT:
            a.i = int(rng.choice([0, -1, 3, 7, 1000]))
        elif a.type == onnx.AttributeProto.INTS and a.ints:
            a.ints[0] = int(rng.choice([0, -2, 5, 99]))
    return "weird attribute"


def _duplicate_output(m, node, nodes, rng):
    if len(nodes) <= 1:
        return None
    nodes[1].output[0] = nodes[0].output[0] if nodes[0].output else "x"
    return "duplicate output name"


def _odd_opset(m, node, nodes, rng):
    m.opset_import[0].version = int(rng.choice([1, 5, 9, 10, 30, 99]))
    return "odd opset"


def _integer_weights(m, node, nodes, rng):
    t = _random_initializer(m, rng)
    if t is None:
        return None
    arr = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array((arr * 10).astype(np.int32), t.name))
    return "integer weights"


def _missing_output(m, node, nodes, rng):
    m.graph.output[0].name = "nowhere"
    return "missing graph output"


def _wrong_op_type(m, node, nodes, rng):
    node.op_type = str(rng.choice(["Frobnicate", "Conv", "Relu", "Softmax"]))
    return "wrong op type"


def _unknown_domain(m, node, nodes, rng):
    node.domain = "unknown.domain"
    return "unknown domain without opset"


def _odd_names(m, node, nodes, rng):
    g = m.graph
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


def _quantized(m, node, nodes, rng):
    g = m.graph
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


_MUTATIONS = [_remove_node, _dangling_input, _maybe_cycle, _shrink_weight, _weird_attribute, _duplicate_output,
              _odd_opset, _integer_weights, _missing_output, _wrong_op_type, _unknown_domain, _odd_names, _quantized]


def _mutate_structure(m: onnx.ModelProto, rng: np.random.Generator) -> str:
    g = m.graph
    kind = rng.integers(0, len(_MUTATIONS) + 1)
    nodes = list(g.node)
    node = nodes[int(rng.integers(0, len(nodes)))]
    what = _MUTATIONS[kind](m, node, nodes, rng) if kind < len(_MUTATIONS) else None
    if what is not None:
        return what
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
