"""Reshape-like ops: Reshape, Flatten, Squeeze, Unsqueeze, Expand.

A reshape is split into blocks of input axes ↔ output axes with equal element counts.
* merge (several axes → one): the output axis goes with the outermost merged input axis,
  so one channel becomes a contiguous block of features (Flatten→Gemm, heads → hidden);
* split (one axis → several): the input axis goes with ONE output factor and the other
  factors keep their size:
  - when the split ends the tensor (hidden → heads × head_dim), the outer factor: whole
    attention heads are the unit;
  - otherwise the inner factor (channel shuffle: the same position in every group).
Shape targets may be constants or, with dynamic batch/sequence, a Concat of run-time
pieces (from Shape) and constant pieces; only constant pieces are ever rewritten.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.dependency.registry import rule
from graphprune.ir.shape_target import DYN, ShapeTarget, resolve_output_dims

def _align_numeric(din: list, dout: list, i0: int, j0: int) -> list | None:
    """Product-matching alignment of two all-known dim lists (offset by i0/j0)."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    n, m = len(din), len(dout)
    while i < n or j < m:
        if i < n and j < m and din[i] == dout[j]:
            blocks.append(([i0 + i], [j0 + j]))
            i += 1
            j += 1
            continue
        if i < n and din[i] == 1:
            blocks.append(([i0 + i], []))
            i += 1
            continue
        if j < m and dout[j] == 1:
            blocks.append(([], [j0 + j]))
            j += 1
            continue
        if i >= n or j >= m:
            return None
        pi, pj, ii, jj = din[i], dout[j], [i0 + i], [j0 + j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= n:
                    return None
                pi *= din[i]
                ii.append(i0 + i)
                i += 1
            else:
                if j >= m:
                    return None
                pj *= dout[j]
                jj.append(j0 + j)
                j += 1
        blocks.append((ii, jj))
    return blocks


def align_reshape(din: list, dout: list) -> list[tuple[list[int], list[int]]] | None:
    """Blocks of input axes ↔ output axes with equal element counts.

    Equal leading and trailing dims map one to one; the middle is aligned by products
    when it is all known, and otherwise becomes one regrouped block (e.g. batch×seq
    flattened into one axis, which the caller freezes) — the hidden axis beside it still
    maps. Returns None only when nothing can be said."""
    if din is None or dout is None:
        return None
    n, m = len(din), len(dout)
    p = 0
    while p < min(n, m) and din[p] == dout[p] and din[p] is not None:
        p += 1
    q = 0
    while q < min(n, m) - p and din[n - 1 - q] == dout[m - 1 - q] and din[n - 1 - q] is not None:
        q += 1
    mid_in, mid_out = din[p:n - q], dout[p:m - q]
    blocks = [([k], [k]) for k in range(p)]
    if mid_in or mid_out:
        mid = _align_symbolic(mid_in, mid_out, p, p)
        if mid is None:
            return None
        blocks += mid
    blocks += [([n - q + k], [m - q + k]) for k in range(q)]
    return blocks


def _align_symbolic(din: list, dout: list, i0: int, j0: int) -> list | None:
    """Run-time dims (batch, sequence) kept in order on both sides pair up one to one, and
    the known dims between them align by products; any other mix of run-time dims is one
    regrouped block."""
    si = [k for k, d in enumerate(din) if not isinstance(d, int)]
    so = [k for k, d in enumerate(dout) if not isinstance(d, int)]
    if not si and not so:
        return _align_numeric(din, dout, i0, j0)
    if len(si) != len(so) or any(din[a] is None or dout[b] is None for a, b in zip(si, so)):
        # e.g. [batch, seq, 4, 8] -> [batch*seq, 32]: the known trailing (and leading) runs
        # align by themselves; the run-time dims in between regroup as one block
        ti = len(din) - (max(si) + 1 if si else 0)
        to = len(dout) - (max(so) + 1 if so else 0)
        li = min(si) if si else len(din)
        lo = min(so) if so else len(dout)
        head = _align_numeric(din[:li], dout[:lo], i0, j0) if li and lo else None
        tail = _align_numeric(din[len(din) - ti:], dout[len(dout) - to:], i0 + len(din) - ti,
                              j0 + len(dout) - to) if ti and to else None
        hi, ho = (li, lo) if head is not None else (0, 0)
        ei, eo = (ti, to) if tail is not None else (0, 0)
        return (head or []) + [(list(range(i0 + hi, i0 + len(din) - ei)),
                                list(range(j0 + ho, j0 + len(dout) - eo)))] + (tail or [])
    blocks: list = []
    pi = pj = 0
    for a, b in list(zip(si, so)) + [(len(din), len(dout))]:
        seg = _align_numeric(din[pi:a], dout[pj:b], i0 + pi, j0 + pj)
        if seg is None:
            return None
        blocks += seg
        if a < len(din):
            blocks.append(([i0 + a], [j0 + b]))
        pi, pj = a + 1, b + 1
    return blocks


def couple_reshape(ctx, x, y, reason: str, dout: list | None = None) -> list[tuple[int, int]] | None:
    """Couple a reshape's axes (see the module docstring). Returns the (in_axis, out_axis)
    pairs whose size may change, or None if everything was frozen."""
    dx = ctx.dims(x)
    dy = dout if dout is not None else ctx.dims(y)
    if dx is None or dy is None:
        ctx.freeze_all(f"{reason}: unknown shapes")
        return None
    blocks = align_reshape(dx, dy)
    if blocks is None:
        ctx.freeze_all(f"{reason}: shapes cannot be aligned")
        return None
    pairs = []
    for ii, jj in blocks:
        known = all(isinstance(dx[a], int) for a in ii) and all(isinstance(dy[b], int) for b in jj)
        if ii and jj and not known and not (len(ii) == 1 and len(jj) == 1):
            for a in ii:
                ctx.freeze(x, a, f"{reason}: regroups run-time-sized axes")
            for b in jj:
                ctx.freeze(y, b, f"{reason}: regroups run-time-sized axes")
            continue
        if not ii or not jj:
            for a in ii:
                ctx.unchanged(x, a)
            for b in jj:
                ctx.unchanged(y, b)
            continue
        if len(ii) == 1 and len(jj) == 1:
            ctx.couple(x, ii[0], y, jj[0])
            pairs.append((ii[0], jj[0]))
        elif len(jj) == 1:  # merge
            a = [k for k in ii if dx[k] != 1][0]
            inner = int(np.prod([dx[k] for k in ii if k > a]))
            n = dx[a]
            ctx.couple(x, a, y, jj[0], np.repeat(np.arange(n), inner), np.arange(n * inner))
            pairs.append((a, jj[0]))
            for k in ii:
                if k != a:
                    ctx.freeze(x, k, f"{reason}: merged into another axis")
        elif len(ii) == 1:  # split
            big = [b for b in jj if dy[b] != 1]
            heads_like = jj[-1] == len(dy) - 1 and len(big) == 2
            b = big[0] if heads_like else big[-1]
            total = dx[ii[0]]
            stride = int(np.prod([dy[k] for k in jj if k > b]))
            e = np.arange(total)
            ctx.couple(x, ii[0], y, b, e, (e // stride) % dy[b])
            pairs.append((ii[0], b))
            for k in jj:
                if k != b:
                    ctx.freeze(y, k, f"{reason}: split off another axis")
        else:
            for a in ii:
                ctx.freeze(x, a, f"{reason}: axes regrouped")
            for b in jj:
                ctx.freeze(y, b, f"{reason}: axes regrouped")
    return pairs


@rule("Reshape")
def reshape(node, ctx):
    x, shape_v = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    ctx.structural(shape_v)
    target = ShapeTarget.of(shape_v)
    dx, dy = ctx.dims(x), ctx.dims(y)
    if target is None or dx is None or dy is None or len(target.entries) != len(dy):
        ctx.freeze_all("Reshape with a shape computed at run time")
        return
    dy = resolve_output_dims(dx, dy, target)
    pairs = couple_reshape(ctx, x, y, "Reshape", dout=dy)
    if pairs is None:
        return
    allowzero = int(ctx.attr("allowzero", 0))
    for j, t in enumerate(target.entries):
        if t == 0 and not allowzero and any(b == j and a != j for a, b in pairs):
            ctx.freeze_all("Reshape copies a dim (0) from another position")
            return
        if target.readonly and isinstance(t, int) and t > 0 and any(b == j for a, b in pairs):
            ctx.freeze(y, j, "Reshape target cannot be rewritten here")
        if t is DYN and any(b == j for a, b in pairs):
            # a run-time entry for an axis that may shrink: only fine if it reads the
            # very dim it reshapes to; we cannot tell, so that axis stays.
            ctx.freeze(y, j, "Reshape target entry computed at run time")

    def rewrite(rc):
        changes = {}
        for a, b in pairs:
            r = len(rc.removed(y, b))
            t = target.entries[b]
            if r and isinstance(t, int) and t > 0:
                changes[b] = dy[b] - r
        target.rewrite(rc, 1, changes, f"{rc.node.name}_shape")

    ctx.on_prune(rewrite)


@rule(["Flatten", "Squeeze", "Unsqueeze"])
def reshape_like(node, ctx):
    ctx.structural(*node.inputs[1:])
    couple_reshape(ctx, node.inputs[0], node.outputs[0], node.op_type)


@rule("Expand")
def expand(node, ctx):
    """Axes the input keeps (equal sizes) are coupled, and a pruned one gets target entry
    1, which broadcasting turns into the input's new size. A broadcast axis (input 1)
    may be pruned from the output side alone (e.g. query heads repeated over one KV
    head): its entry becomes the new size. Any target — constant or computed at run
    time — is rewritten by one Where with constant mask and values."""
    x, shape_v = node.inputs
    y = node.outputs[0]
    ctx.structural(shape_v)
    dx, dy, ds = ctx.dims(x), ctx.dims(y), ctx.dims(shape_v)
    if dx is None or dy is None or ds is None or not isinstance(ds[0], int) or ds[0] > len(dy):
        ctx.freeze_all("Expand with a shape of unknown length")
        return
    ctx.broadcast([x], y)
    xoff, toff = len(dy) - len(dx), len(dy) - ds[0]
    for j in range(len(dy)):
        k = j - xoff
        if (k < 0 or dx[k] == 1) and isinstance(dy[j], int) and dy[j] > 1 and j - toff >= 0:
            ctx.unchanged(y, j)  # broadcast axis: prunable from the output side

    def rewrite(rc):
        mask = np.zeros(ds[0], dtype=bool)
        vals = np.ones(ds[0], dtype=np.int64)
        for j in range(len(dy)):
            r = len(rc.removed(y, j))
            if r and j - toff >= 0:
                k = j - xoff
                mask[j - toff] = True
                vals[j - toff] = dy[j] - r if (k < 0 or dx[k] == 1) else 1
        if not mask.any():
            return
        target = ShapeTarget.of(shape_v)
        if target is not None and target.pieces is None and not target.readonly:
            arr = np.array(target.entries, dtype=np.int64)
            arr[mask] = vals[mask]
            rc.set_input_const(1, arr, f"{rc.node.name}_shape")
            return
        where = ir.Node("", "Where", [rc.new_const(mask, f"{rc.node.name}_mask"),
                                     rc.new_const(vals, f"{rc.node.name}_sizes"), shape_v],
                        name=rc.unique_name(f"{rc.node.name}_resize"))
        where.outputs[0].name = rc.unique_name(f"{rc.node.name}_shape")
        where.outputs[0].shape = ir.Shape([ds[0]])
        where.outputs[0].dtype = ir.DataType.INT64
        rc.node.graph.insert_before(rc.node, where)
        rc.node.replace_input_with(1, where.outputs[0])

    ctx.on_prune(rewrite)
