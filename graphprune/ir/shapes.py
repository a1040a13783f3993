"""Shape helpers: dims as plain ints (static) or strings/None (symbolic/unknown)."""
from __future__ import annotations

import onnx_ir as ir


def dims_of(value: ir.Value | None) -> list[int | str | None] | None:
    """Dims of a value: int for static, str for named symbolic, None for unknown dim.

    Returns None when even the rank is unknown.
    """
    if value is None or value.shape is None:
        return None
    out: list[int | str | None] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        elif isinstance(d, ir.SymbolicDim):
            out.append(d.value)
        else:
            out.append(None)
    return out


def rank_of(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)
