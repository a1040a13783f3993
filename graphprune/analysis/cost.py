"""Parameter and MAC counts per node (symbolic dims count as 1)."""
from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from graphprune.ir.constants import const_producer, is_constant
from graphprune.ir.layers import layer_of
from graphprune.ir.layers import volume as _prod  # symbolic dims count as 1


def node_macs(node: ir.Node) -> int:
    """MACs of one node (0 for ops that do no multiply-accumulate, or malformed nodes)."""
    try:
        return _node_macs(node)
    except (IndexError, TypeError, ValueError):  # e.g. a Conv without its weight input
        return 0


def _node_macs(node: ir.Node) -> int:
    layer = layer_of(node)
    return 0 if layer is None else layer.macs()


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
