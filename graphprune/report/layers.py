"""Per-layer figures for reports: output width and MACs of every weighted op, before/after."""
from __future__ import annotations

import onnx_ir as ir

from graphprune.analysis.cost import layer_macs
from graphprune.ir.layers import attrs_of, weighted_op
from graphprune.ir.shapes import dims_of


def _out_width(node: ir.Node) -> int | None:
    d = dims_of(node.outputs[0])
    if not d:
        return None
    axis = weighted_op(node).axes(attrs_of(node), y_rank=len(d)).y
    return d[axis] if isinstance(d[axis], int) else None


def layer_table(model: ir.Model, shapes: dict | None = None) -> dict[str, dict]:
    """Per weighted op: op, output width, MACs (at `shapes`, {input: shape}, when given)."""
    macs = layer_macs(model, shapes)
    return {n.name: {"op": n.op_type, "width": _out_width(n), "macs": macs.get(n.name, 0)}
            for n in model.graph if weighted_op(n) is not None}


def compare_layers(before: ir.Model, after: ir.Model, shapes: dict | None = None) -> list[dict]:
    """One row per weighted op of the input model; removed ops (depth pruning) have None after.
    MACs at `shapes` ({input: shape}, the run's representative shapes) when given."""
    b, a = layer_table(before, shapes), layer_table(after, shapes)
    rows = []
    for name, row in b.items():
        other = a.get(name)
        rows.append({"name": name, "op": row["op"], "width_before": row["width"], "macs_before": row["macs"],
                     "width_after": other["width"] if other else 0, "macs_after": other["macs"] if other else 0,
                     "removed": other is None})
    return rows
