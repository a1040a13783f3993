"""Parameter and MAC counts per node (symbolic dims count as 1)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_producer, is_constant
from graphprune.ir.shapes import dims_of


def _prod(dims) -> int:
    # symbolic dims, and the -1 some exporters write for a dynamic batch, count as 1
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims], dtype=np.int64)) if dims else 1


def node_macs(node: ir.Node) -> int:
    """MACs of one node (0 for ops that do no multiply-accumulate, or malformed nodes)."""
    try:
        return _node_macs(node)
    except (IndexError, TypeError, ValueError):  # e.g. a Conv without its weight input
        return 0


def _node_macs(node: ir.Node) -> int:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return 0
    if op == "Conv":
        w, y = dims_of(node.inputs[1]), dims_of(node.outputs[0])
        if w is None or y is None:
            return 0
        return _prod(y) * _prod(w[1:])
    if op == "ConvTranspose":
        x, w = dims_of(node.inputs[0]), dims_of(node.inputs[1])
        if x is None or w is None:
            return 0
        return _prod(x) * _prod(w[1:])
    if op == "Gemm":
        a, y = dims_of(node.inputs[0]), dims_of(node.outputs[0])
        if a is None or y is None:
            return 0
        k = a[0] if node.attributes.get("transA") and node.attributes["transA"].value else a[1]
        return _prod(y) * _prod([k])
    if op == "MatMul":
        a, y = dims_of(node.inputs[0]), dims_of(node.outputs[0])
        if a is None or y is None:
            return 0
        return _prod(y) * _prod([a[-1]])
    return 0


@dataclass
class Cost:
    params: int
    macs: int
    nodes: int


def model_cost(model: ir.Model) -> Cost:
    params = 0
    seen: set[str] = set()
    for v in model.graph.initializers.values():
        if v.dtype is not None and v.dtype.is_floating_point() and v.shape is not None:
            params += _prod(list(v.shape))
            seen.add(v.name)
    macs = 0
    n = 0
    for node in model.graph:
        n += 1
        macs += node_macs(node)
        if const_producer(node.outputs[0]) is not None if node.outputs else False:
            v = node.outputs[0]
            if v.name not in seen and is_constant(v) and v.dtype is not None and \
                    v.dtype.is_floating_point() and v.shape is not None:
                params += _prod(list(v.shape))
    return Cost(params=params, macs=macs, nodes=n)
