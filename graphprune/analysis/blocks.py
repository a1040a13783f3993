"""Residual blocks: a branch that starts and ends at the same residual stream.

For every `Add(skip, branch)` whose `branch` is computed from `skip` (plus side inputs
that do not depend on it, such as an attention mask), the block is the set of nodes
between them. It can go — the Add becomes the skip — when no node of the block feeds
anything outside the block and both Add inputs have the same shape. This finds ResNet
basic/bottleneck blocks (not the downsampling ones, whose skip is a projection), and
the attention and MLP sub-blocks of pre-LN and post-LN transformers alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from graphprune.ir.constants import is_constant
from graphprune.ir.layers import layer_of
from graphprune.ir.shapes import dims_of


@dataclass
class ResidualBlock:
    add: str  # the Add node's name
    skip: str  # value name of the residual stream entering the block
    branch: str  # value name of the branch output
    nodes: list[str] = field(default_factory=list)  # node names of the branch, topological
    params: int = 0

    @property
    def id(self) -> str:
        return self.add

    @property
    def key(self) -> tuple[str, str]:
        """Stable identity across loads: the two value names the Add joins."""
        return (self.skip, self.branch)


def _has_weight(node: ir.Node) -> bool:
    layer = layer_of(node)
    return layer is not None and layer.w is not None and is_constant(layer.w)


def _descendants(v: ir.Value) -> set[int]:
    seen: set[int] = set()
    stack = [v]
    while stack:
        cur = stack.pop()
        for use in cur.uses():
            n = use.node
            if id(n) in seen:
                continue
            seen.add(id(n))
            stack.extend(n.outputs)
    return seen


def _branch_nodes(skip: ir.Value, branch: ir.Value, below_skip: set[int]) -> list[ir.Node] | None:
    """Nodes that are ancestors of `branch` and descendants of `skip`."""
    out: dict[int, ir.Node] = {}
    stack = [branch]
    while stack:
        v = stack.pop()
        n = v.producer()
        if n is None or id(n) in out or id(n) not in below_skip:
            continue
        out[id(n)] = n
        stack.extend(i for i in n.inputs if i is not None)
    return list(out.values()) if out else None


def find_residual_blocks(model: ir.Model) -> list[ResidualBlock]:
    graph = model.graph
    order = {id(n): k for k, n in enumerate(graph)}
    outputs = {id(v) for v in graph.outputs}
    blocks = []
    for add in graph:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
            continue
        if any(v is None or is_constant(v) for v in add.inputs):
            continue
        for skip, branch in (add.inputs, reversed(add.inputs)):
            ds, db, dy = dims_of(skip), dims_of(branch), dims_of(add.outputs[0])
            if ds is None or ds != db or ds != dy:
                continue
            below = _descendants(skip)
            if id(branch.producer()) not in below if branch.producer() is not None else True:
                continue
            nodes = _branch_nodes(skip, branch, below)
            if nodes is None:
                continue
            if not any(_has_weight(n) for n in nodes):
                continue  # e.g. x + f(x) inside an activation: not a layer
            ids = {id(n) for n in nodes}
            closed = all(id(u.node) in ids or u.node is add for n in nodes for o in n.outputs for u in o.uses()) \
                and not any(id(o) in outputs for n in nodes for o in n.outputs)
            if not closed:
                continue
            nodes.sort(key=lambda n: order[id(n)])
            params = sum(int(v.const_value.size) for n in nodes for v in n.inputs
                         if v is not None and v.const_value is not None and v.is_initializer())
            blocks.append(ResidualBlock(add.name, skip.name, branch.name, [n.name for n in nodes], params))
            break
    return blocks
