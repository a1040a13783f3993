"""A readable, compact text form of a graph (one node a line), for error messages and
`inspect --graph`.

    %y[1x8x4x4] = Conv(%x[1x4x4x4], #w[8x2x1x1]) {group=2, kernel_shape=[1,1]}  # conv1

`%` marks a computed value, `#` a constant (initializer or Constant output; Constant
nodes themselves are not listed), `_` an omitted optional input; shapes are `x`-joined
dims with `?` for unknown. Subgraphs (If/Loop/Scan bodies) are printed indented under
the node that owns them.
"""
from __future__ import annotations

import onnx_ir as ir

from graphprune.ir.constants import is_constant
from graphprune.ir.shapes import dims_of


def _fmt_value(v: ir.Value | None) -> str:
    if v is None:
        return "_"
    dims = dims_of(v)
    shape = "?" if dims is None else "x".join("?" if d is None else str(d) for d in dims)
    mark = "#" if is_constant(v) else "%"
    return f"{mark}{v.name}[{shape}]"


MAX_LIST = 8  # list-valued attributes longer than this are cut


def _fmt_attr(attr: ir.Attr) -> str:
    if attr.is_ref():
        return f"@{attr.ref_attr_name}"
    t, v = attr.type, attr.value
    if t == ir.AttributeType.GRAPH:
        return f"<graph {v.name or ''}>".replace(" >", ">")
    if t == ir.AttributeType.GRAPHS:
        return f"<{len(v)} graphs>"
    if t in (ir.AttributeType.TENSOR, ir.AttributeType.SPARSE_TENSOR):
        return f"tensor[{'x'.join(str(d) for d in v.shape)}]"
    if t == ir.AttributeType.FLOAT:
        return f"{v:g}"
    if t in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        items = [f"{x:g}" if isinstance(x, float) else str(x) for x in list(v)[:MAX_LIST]]
        return "[" + ",".join(items) + (",..." if len(v) > MAX_LIST else "") + "]"
    return str(v)


def _graph_attrs(node: ir.Node) -> list[tuple[str, ir.Graph]]:
    out = []
    for name, attr in node.attributes.items():
        if attr.is_ref():
            continue
        if attr.type == ir.AttributeType.GRAPH:
            out.append((name, attr.value))
        elif attr.type == ir.AttributeType.GRAPHS:
            out.extend((f"{name}[{i}]", g) for i, g in enumerate(attr.value))
    return out


def format_node(node: ir.Node) -> str:
    """One line: outputs = op(inputs) {attributes}  # node name."""
    op = node.op_type if not node.domain else f"{node.domain}::{node.op_type}"
    outs = ", ".join(_fmt_value(v) for v in node.outputs)
    ins = ", ".join(_fmt_value(v) for v in node.inputs)
    attrs = ", ".join(f"{k}={_fmt_attr(a)}" for k, a in node.attributes.items())
    line = f"{outs} = {op}({ins})" + (f" {{{attrs}}}" if attrs else "")
    return line + (f"  # {node.name}" if node.name else "")


def _graph_lines(graph: ir.Graph, indent: str, max_nodes: int | None) -> list[str]:
    lines = [f"{indent}inputs:  " + ", ".join(_fmt_value(v) for v in graph.inputs),
             f"{indent}outputs: " + ", ".join(_fmt_value(v) for v in graph.outputs)]
    listed = [n for n in graph if n.op_type != "Constant"]
    for shown, node in enumerate(listed):
        if max_nodes is not None and shown >= max_nodes:
            lines.append(f"{indent}... {len(listed) - shown} more nodes")
            break
        lines.append(indent + format_node(node))
        for name, sub in _graph_attrs(node):
            lines.append(f"{indent}  {name}: graph {sub.name or '(unnamed)'}")
            lines.extend(_graph_lines(sub, indent + "    ", None))
    return lines


def format_graph(model: ir.Model, *, max_nodes: int | None = None) -> str:
    """The model's main graph, one node a line; at most `max_nodes` nodes (Constants not
    counted) of the main graph, then how many more there are."""
    g = model.graph
    return "\n".join([f"graph {g.name or '(unnamed)'}", *_graph_lines(g, "  ", max_nodes)])
