"""A readable, compact text form of a graph (one node a line)."""
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


def format_graph(model: ir.Model, *, max_nodes: int | None = None) -> str:
    g = model.graph
    lines = [f"graph {g.name or '(unnamed)'}"]
    lines.append("  inputs:  " + ", ".join(_fmt_value(v) for v in g.inputs))
    lines.append("  outputs: " + ", ".join(_fmt_value(v) for v in g.outputs))
    for i, node in enumerate(g):
        if max_nodes is not None and i >= max_nodes:
            lines.append(f"  ... {len(g) - max_nodes} more nodes")
            break
        if node.op_type == "Constant":
            continue
        op = node.op_type if not node.domain else f"{node.domain}::{node.op_type}"
        outs = ", ".join(_fmt_value(v) for v in node.outputs)
        ins = ", ".join(_fmt_value(v) for v in node.inputs)
        lines.append(f"  {outs} = {op}({ins})  # {node.name}")
    return "\n".join(lines)
