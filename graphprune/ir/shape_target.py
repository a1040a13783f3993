"""Shape targets (Reshape/Expand shape inputs) as entries: constants or run-time pieces.

With dynamic batch/sequence, exporters build a target as Concat(Shape(x)[i]..., const...);
the constant pieces are what pruning may have to rewrite.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_array

DYN = None  # an entry of a shape target known only at run time


class ShapeTarget:
    """A 1-D int64 shape tensor as a list of entries (int, or DYN for run-time pieces)."""

    def __init__(self, value: ir.Value, entries: list, pieces: list | None):
        self.value = value
        self.entries = entries
        self.pieces = pieces  # Concat inputs with their (start, length) in `entries`, or None if constant

    readonly = False  # entries known, but the target cannot be rewritten piecewise

    @classmethod
    def of(cls, value: ir.Value | None) -> "ShapeTarget | None":
        if value is None:
            return None
        arr = const_array(value)
        if arr is not None:
            return cls(value, [int(x) for x in arr.reshape(-1)], None)
        node = value.producer()
        if node is not None and node.op_type in ("Reshape", "Identity", "Cast") and value.shape is not None \
                and len(value.shape) == 1:
            inner = cls.of(node.inputs[0])  # a 1-D target passed through unchanged
            if inner is None or len(inner.entries) != (value.shape[0] if isinstance(value.shape[0], int) else -1):
                return None
            t = cls(value, inner.entries, None)
            t.readonly = True
            return t
        if node is not None and node.op_type == "Where" and len(node.inputs) == 3:
            # torch's expand idiom: Where(Equal(t, -1), ones, t) — entries of t other than -1
            cond = node.inputs[0].producer() if node.inputs[0] is not None else None
            if cond is not None and cond.op_type == "Equal" and cond.inputs[0] is node.inputs[2]:
                inner = cls.of(node.inputs[2])
                c = const_array(cond.inputs[1])
                if inner is not None and c is not None and c.size in (1, len(inner.entries)):
                    cs = np.broadcast_to(c.reshape(-1), (len(inner.entries),))
                    entries = [DYN if e == int(k) else e for e, k in zip(inner.entries, cs, strict=True)]
                    t = cls(value, entries, None)
                    t.readonly = True
                    return t
            return None
        if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
            return None
        entries, pieces = [], []
        for v in node.inputs:
            a = const_array(v)
            if a is not None:
                vals = [int(x) for x in a.reshape(-1)]
            else:
                if v is None or v.shape is None or len(v.shape) != 1 or not isinstance(v.shape[0], int):
                    return None
                vals = [DYN] * v.shape[0]
            pieces.append((v, len(entries), len(vals)))
            entries.extend(vals)
        return cls(value, entries, pieces)

    def rewrite(self, rc, input_index: int, new_entries: dict[int, int], hint: str) -> None:
        """Point the node's shape input at a target with some constant entries changed."""
        if not new_entries:
            return
        if self.readonly:
            raise ValueError("this shape target cannot be rewritten piecewise")
        if self.pieces is None:
            arr = np.array(self.entries, dtype=np.int64)
            for j, n in new_entries.items():
                arr[j] = n
            rc.set_input_const(input_index, arr, hint)
            return
        inputs = []
        for v, start, length in self.pieces:
            touched = {j - start: n for j, n in new_entries.items() if start <= j < start + length}
            if touched:
                arr = const_array(v).reshape(-1).astype(np.int64).copy()
                for k, n in touched.items():
                    arr[k] = n
                v = rc.new_const(arr, hint)
            inputs.append(v)
        concat = ir.Node("", "Concat", inputs, attributes=[ir.AttrInt64("axis", 0)],
                         name=rc.unique_name(hint + "_concat"))
        concat.outputs[0].name = rc.unique_name(hint)
        concat.outputs[0].shape = ir.Shape([len(self.entries)])
        concat.outputs[0].dtype = ir.DataType.INT64
        rc.node.graph.insert_before(rc.node, concat)
        rc.node.replace_input_with(input_index, concat.outputs[0])


def resolve_output_dims(din: list, dout: list, target: ShapeTarget | None) -> list:
    """Fill an output dim that shape inference left symbolic when the target says -1 (or a
    constant) and the rest of the element count is known."""
    dout = list(dout)
    if target is None or len(target.entries) != len(dout):
        return dout
    for j, t in enumerate(target.entries):
        if isinstance(t, int) and t > 0:
            dout[j] = t
    unknown = [j for j, d in enumerate(dout) if not isinstance(d, int)]
    minus = [j for j in unknown if target.entries[j] == -1]
    if len(minus) != 1:
        return dout
    sym_in = [d for d in din if not isinstance(d, int)]
    sym_out = [dout[j] for j in unknown if j != minus[0]]
    # the run-time dims on both sides are taken to be the same ones (batch, sequence kept
    # across the reshape) when they are as many; ORT and the oracle check it at run time
    if len(sym_in) != len(sym_out):
        return dout
    num = int(np.prod([d for d in din if isinstance(d, int)]))
    den = int(np.prod([d for d in dout if isinstance(d, int)]))
    if den and num % den == 0:
        dout[minus[0]] = num // den
    return dout




def resolve_expand_dims(din: list, dout: list, target: ShapeTarget | None) -> list:
    """Expand's output: the input's dim wherever the input is not 1 (broadcast rules), the
    target's known entry where it is."""
    out = list(dout)
    off = len(dout) - len(din)
    for j in range(len(dout)):
        k = j - off
        if k >= 0 and isinstance(din[k], int) and din[k] != 1:
            out[j] = din[k]
        elif target is not None and len(target.entries) == len(dout) and isinstance(target.entries[j], int) \
                and target.entries[j] > 0:
            out[j] = target.entries[j] if k < 0 or din[k] == 1 else out[j]
    return out
