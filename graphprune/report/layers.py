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


def layer_table(model: ir.Model, shapes: dict | None = None, macs: dict | None = None) -> dict[str, dict]:
    """Per weighted op: op, output width, MACs (at `shapes`, {input: shape}, when given;
    `macs`: the per-layer MACs already counted there, e.g. a run's `Cost.layers`)."""
    macs = layer_macs(model, shapes) if macs is None else macs
    return {n.name: {"op": n.op_type, "width": _out_width(n), "macs": macs.get(n.name, 0)}
            for n in model.graph if weighted_op(n) is not None}


def compare_layers(before: ir.Model, after: ir.Model, shapes: dict | None = None, *, costs=(None, None)) \
        -> list[dict]:
    """One row per weighted op of the input model; removed ops (depth pruning) have None after.
    MACs at `shapes` ({input: shape}, the run's representative shapes) when given; `costs`:
    the run's (before, after) `Cost`s, whose per-layer MACs are used when counted at `shapes`
    (a 5,000-node model re-infers its shapes in seconds)."""
    def counted(cost):
        return cost.layers if cost is not None and cost.layers is not None and \
            (cost.shapes or None) == ({k: tuple(int(d) for d in v) for k, v in shapes.items()} if shapes else None) \
            else None

    b, a = layer_table(before, shapes, counted(costs[0])), layer_table(after, shapes, counted(costs[1]))
    rows = []
    for name, row in b.items():
        other = a.get(name)
        rows.append({"name": name, "op": row["op"], "width_before": row["width"], "macs_before": row["macs"],
                     "width_after": other["width"] if other else 0, "macs_after": other["macs"] if other else 0,
                     "removed": other is None})
    return rows
