"""Removing unused nodes and initializers without touching what the kept nodes look like.

onnx_ir's RemoveUnusedNodesPass also drops trailing empty optional inputs (`Pad(x, pads,
"")` becomes `Pad(x, pads)`). The two mean the same, but ONNX Runtime 1.31 treats them
differently: it fuses the second form into a following MaxPool, whose padding acts as -inf
rather than the Pad's zeros. That changes the outputs whenever a padded value is negative
(the oracle caught it on a random graph). So a node keeps exactly the inputs it had.
"""
from __future__ import annotations

import onnx_ir as ir


def _nodes(graph: ir.Graph):
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _nodes(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    yield from _nodes(g)


def remove_unused(model: ir.Model) -> None:
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    arity = {id(n): len(n.inputs) for n in _nodes(model.graph)}
    RemoveUnusedNodesPass()(model)
    for node in _nodes(model.graph):
        n = arity.get(id(node))
        if n is not None and len(node.inputs) < n:
            node.resize_inputs(n)
