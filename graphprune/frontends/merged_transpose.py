"""A transpose written as Reshape -> Transpose -> Reshape, read as the one Transpose it is.

torch's dynamo exporter (opset < 23) writes `scaled_dot_product_attention`'s
`key.transpose(-2, -1)` of a [B, H, S, D] key as: Reshape to [B·H, S, D] (a target computed
from Shape(key) at run time), Transpose(0, 2, 1), Reshape back to [B, H, D, S]. Merging the
head axis into a dynamic batch leaves no axis the heads could be sliced on ("Reshape: shapes
cannot be aligned"), so every head of an HF model exported with its default SDPA attention
was frozen. The three nodes move data exactly as Transpose(key, (0, 1, 3, 2)) does, which
replaces them: the leading axes merged by the first Reshape are split back unchanged by the
second, and the Transpose between them keeps the merged axis first.

Recognised from the inferred shapes alone: the first Reshape keeps the input's trailing
dims (so it merges its leading ones, row-major), and the second gives back the input's
leading dims followed by the transposed trailing ones; a dim that is unknown matches nothing.
"""
from __future__ import annotations

import onnx_ir as ir

from graphprune.ir.constants import STD_DOMAINS
from graphprune.ir.shapes import dims_of


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain in STD_DOMAINS else None


def _known(dims) -> bool:
    return dims is not None and all(d is not None for d in dims)


def _transpose_perm(second: ir.Node) -> list[int] | None:
    """The permutation of the input of `second` (the last Reshape) that the three nodes make,
    or None when they are not the pattern."""
    mid = _producer(second.inputs[0], "Transpose")
    first = _producer(mid.inputs[0], "Reshape") if mid is not None else None
    if first is None:
        return None
    x = first.inputs[0]
    dx, dm, dt, dy = (dims_of(v) for v in (x, first.outputs[0], mid.outputs[0], second.outputs[0]))
    if not all(_known(d) for d in (dx, dm, dt, dy)):
        return None
    merged = len(dx) - len(dm) + 1  # leading axes of x merged into the first axis
    perm_attr = mid.attributes.get("perm")
    perm = list(perm_attr.value) if perm_attr is not None else list(reversed(range(len(dm))))
    if merged < 2 or len(dm) < 2 or perm[0] != 0 or sorted(perm) != list(range(len(dm))):
        return None
    if dm[1:] != dx[merged:] or dy != dx[:merged] + dt[1:]:
        return None
    return list(range(merged)) + [merged + p - 1 for p in perm[1:]]


def read_merged_transposes(model: ir.Model) -> bool:
    """Replace each Reshape -> Transpose -> Reshape that is a transpose by a Transpose of its
    input (the old nodes are left unread, for remove_unused). Returns whether any was."""
    changed = False
    for second in list(model.graph):
        if second.op_type != "Reshape" or second.domain not in STD_DOMAINS:
            continue
        perm = _transpose_perm(second)
        if perm is None:
            continue
        x = second.inputs[0].producer().inputs[0].producer().inputs[0]
        y = second.outputs[0]
        node = ir.Node("", "Transpose", [x], attributes=[ir.AttrInt64s("perm", perm)], name=f"{second.name}_transpose")
        out = node.outputs[0]
        out.type, out.shape = y.type, ir.Shape(list(y.shape))
        model.graph.insert_before(second, node)
        ir.convenience.replace_all_uses_with(y, out)
        for i, o in enumerate(model.graph.outputs):
            if o is y:
                model.graph.outputs[i] = out
        name = y.name
        y.name = f"{name}_as_reshapes"
        out.name = name  # the value keeps its name (a graph output's, or what a plan names)
        changed = True
    return changed
