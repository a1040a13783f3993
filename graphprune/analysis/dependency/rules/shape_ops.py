"""Data-movement ops: index maps between channel slots.

Concat/Split/Slice shift indices by offsets; Reshape-like ops (Reshape, Flatten,
Squeeze, Unsqueeze) merge or split axes, which maps one channel to a block of features
(Flatten→Gemm) or ties channels across an outer factor (channel shuffle); Gather,
Depth/SpaceToDepth permute or replicate channels. Rewrites keep the structural constants
(split sizes, slice bounds, shape targets, gather indices) in step with the removal.
"""
from __future__ import annotations

import numpy as np

from graphprune.analysis.dependency.registry import rule


def _axis(ctx, v, default=0):
    a = int(ctx.attr("axis", default))
    r = len(ctx.dims(v) or ())
    return a + r if a < 0 else a


@rule("Concat")
def concat(node, ctx):
    y = node.outputs[0]
    dy = ctx.dims(y)
    if dy is None:
        ctx.freeze_all("Concat of unknown rank")
        return
    axis = _axis(ctx, y)
    off = 0
    for v in node.inputs:
        d = ctx.dims(v)
        n = d[axis]
        if not isinstance(n, int):
            ctx.freeze_all("Concat along a dynamic axis")
            return
        for ax in range(len(dy)):
            if ax == axis:
                if n:
                    ctx.couple(v, ax, y, ax, np.arange(n), off + np.arange(n))
                else:
                    ctx.unchanged(v, ax)
            else:
                ctx.couple(v, ax, y, ax)
        if ctx.const(v) is not None:
            for ax in range(len(dy)):
                ctx.param(v, ax, "concat_const")
        off += n


@rule("Split")
def split(node, ctx):
    x = node.inputs[0]
    dx = ctx.dims(x)
    if dx is None:
        ctx.freeze_all("Split of unknown rank")
        return
    axis = _axis(ctx, x)
    sizes = [(ctx.dims(o) or [None] * len(dx))[axis] for o in node.outputs]
    if not all(isinstance(s, int) for s in sizes):
        ctx.freeze_all("Split with unknown output sizes")
        return
    split_in = node.inputs[1] if len(node.inputs) > 1 else None
    ctx.structural(split_in)
    off = 0
    for o, n in zip(node.outputs, sizes):
        for ax in range(len(dx)):
            if ax == axis:
                ctx.couple(x, ax, o, ax, off + np.arange(n), np.arange(n))
            else:
                ctx.couple(x, ax, o, ax)
        off += n
    opset = ctx.opset

    def rewrite(rc):
        new = np.array([n - len(rc.removed(o, axis)) for o, n in zip(node.outputs, sizes)], np.int64)
        if np.array_equal(new, sizes):
            return
        if opset >= 13:
            if len(rc.node.inputs) < 2:
                rc.node.resize_inputs(2)
            rc.set_input_const(1, new, f"{rc.node.name}_split")
            rc.node.attributes.pop("num_outputs", None)
        else:
            rc.set_attr_ints("split", new)

    ctx.on_prune(rewrite)


@rule("Slice", since=10)
def slice_(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    dx, dy = ctx.dims(x), ctx.dims(y)
    ctx.structural(*node.inputs[1:])
    args = [ctx.const(v) if v is not None else None for v in node.inputs[1:5]]
    while len(args) < 4:
        args.append(None)
    starts, ends, axes, steps = args
    if dx is None or dy is None or starts is None or ends is None or \
            (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) or \
            (len(node.inputs) > 4 and node.inputs[4] is not None and steps is None):
        ctx.freeze_all("Slice with non-constant arguments")
        return
    rank = len(dx)
    axes = list(range(len(starts))) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes]
    steps = [1] * len(axes) if steps is None else [int(s) for s in steps]
    ranges = {}
    for k, ax in enumerate(axes):
        if steps[k] != 1 or not isinstance(dx[ax], int):
            continue  # unmapped, hence frozen
        n = dx[ax]
        s, e = int(starts[k]), int(ends[k])
        s = min(max(s + n if s < 0 else s, 0), n)
        e = min(max(e + n if e < 0 else e, 0), n)
        e = max(e, s)
        ranges[ax] = (k, s, e)
    for ax in range(rank):
        if ax in ranges:
            _, s, e = ranges[ax]
            if e > s:
                ctx.couple(x, ax, y, ax, s + np.arange(e - s), np.arange(e - s))
            else:
                ctx.unchanged(x, ax)
                ctx.unchanged(y, ax)
        elif ax not in axes:
            ctx.couple(x, ax, y, ax)

    def rewrite(rc):
        new_s = np.array(starts, dtype=np.int64).copy()
        new_e = np.array(ends, dtype=np.int64).copy()
        changed = False
        for ax, (k, s, e) in ranges.items():
            rx = rc.removed(x, ax)
            ry = rc.removed(y, ax)
            if not len(rx):
                continue
            ns = s - int(np.sum(rx < s))
            new_s[k], new_e[k] = ns, ns + (e - s) - len(ry)
            changed = True
        if changed:
            rc.set_input_const(1, new_s.astype(starts.dtype), f"{rc.node.name}_starts")
            rc.set_input_const(2, new_e.astype(ends.dtype), f"{rc.node.name}_ends")

    ctx.on_prune(rewrite)


@rule("Transpose")
def transpose(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    dx = ctx.dims(x)
    if dx is None:
        ctx.freeze_all("Transpose of unknown rank")
        return
    perm = ctx.attr("perm") or list(reversed(range(len(dx))))
    for out_ax, in_ax in enumerate(perm):
        ctx.couple(x, int(in_ax), y, out_ax)


# ---- reshape-like ops -----------------------------------------------------------------

def align_reshape(din: list, dout: list) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into blocks of input axes ↔ output axes with equal element counts.

    Returns None when the shapes cannot be aligned (unknown or mismatched symbolic dims).
    """
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    n, m = len(din), len(dout)
    while i < n or j < m:
        if i < n and j < m and din[i] == dout[j] and din[i] is not None:
            blocks.append(([i], [j]))
            i += 1
            j += 1
            continue
        if i < n and din[i] == 1:
            blocks.append(([i], []))
            i += 1
            continue
        if j < m and dout[j] == 1:
            blocks.append(([], [j]))
            j += 1
            continue
        if i >= n or j >= m or not isinstance(din[i], int) or not isinstance(dout[j], int):
            return None
        pi, pj, ii, jj = din[i], dout[j], [i], [j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= n or not isinstance(din[i], int):
                    return None
                pi *= din[i]
                ii.append(i)
                i += 1
            else:
                if j >= m or not isinstance(dout[j], int):
                    return None
                pj *= dout[j]
                jj.append(j)
                j += 1
        blocks.append((ii, jj))
    return blocks


def couple_reshape(ctx, x, y, reason: str) -> list[tuple[int, int]] | None:
    """Couple input and output axes of a reshape-like op. Returns the (in_axis, out_axis)
    pairs whose size may change (for rewriting a shape target), or None if frozen.

    A merge couples the output axis with the outermost merged input axis (each channel
    becomes a contiguous block); a split couples the input axis with the innermost
    output axis (channels at the same inner position are tied across the outer factor).
    The other axes of a merge or split must keep their size and are frozen.
    """
    dx, dy = ctx.dims(x), ctx.dims(y)
    if dx is None or dy is None:
        ctx.freeze_all(f"{reason}: unknown shapes")
        return None
    blocks = align_reshape(dx, dy)
    if blocks is None:
        ctx.freeze_all(f"{reason}: shapes cannot be aligned")
        return None
    pairs = []
    for ii, jj in blocks:
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
            big = [a for a in ii if dx[a] != 1]
            a = big[0]
            inner = int(np.prod([dx[k] for k in ii if k > a]))
            n = dx[a]
            ctx.couple(x, a, y, jj[0], np.repeat(np.arange(n), inner), np.arange(n * inner))
            pairs.append((a, jj[0]))
            for k in ii:
                if k != a:
                    ctx.freeze(x, k, f"{reason}: merged into another axis")
        elif len(ii) == 1:  # split
            big = [b for b in jj if dy[b] != 1]
            b = big[-1]
            n = dy[b]
            total = dx[ii[0]]
            ctx.couple(x, ii[0], y, b, np.arange(total), np.arange(total) % n)
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
    target = ctx.const(shape_v)
    if target is None:
        ctx.freeze_all("Reshape with a shape computed at run time")
        return
    pairs = couple_reshape(ctx, x, y, "Reshape")
    if pairs is None:
        return
    allowzero = int(ctx.attr("allowzero", 0))
    dy = ctx.dims(y)
    target = target.reshape(-1)
    # A 0 entry copies the input's dim at the same position: only valid if that pair maps.
    for j, t in enumerate(target):
        if t == 0 and not allowzero and any(b == j and a != j for a, b in pairs):
            ctx.freeze_all("Reshape copies a dim (0) from another position")
            return

    def rewrite(rc):
        new = target.copy()
        changed = False
        for a, b in pairs:
            r = len(rc.removed(y, b))
            if r and new[b] > 0:
                new[b] = dy[b] - r
                changed = True
        if changed:
            rc.set_input_const(1, new.astype(target.dtype), f"{rc.node.name}_shape")

    ctx.on_prune(rewrite)


@rule(["Flatten", "Squeeze", "Unsqueeze"])
def reshape_like(node, ctx):
    ctx.structural(*node.inputs[1:])
    couple_reshape(ctx, node.inputs[0], node.outputs[0], node.op_type)


@rule("Gather")
def gather(node, ctx):
    data, idx_v = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    dd, di, dy = ctx.dims(data), ctx.dims(idx_v), ctx.dims(y)
    if dd is None or di is None or dy is None:
        ctx.freeze_all("Gather with unknown ranks")
        return
    axis = _axis(ctx, data)
    for ax in range(axis):
        ctx.couple(data, ax, y, ax)
    for ax in range(axis + 1, len(dd)):
        ctx.couple(data, ax, y, ax - 1 + len(di))
    idx = ctx.const(idx_v)
    if ctx.const(data) is not None:
        for ax in range(len(dd)):
            if ax != axis:
                ctx.param(data, ax, "embedding")
    if idx is None:
        for k in range(len(di)):
            ctx.couple(idx_v, k, y, axis + k)
        ctx.freeze(data, axis, "Gather along this axis with run-time indices")
        return
    ctx.structural(idx_v)
    n = dd[axis]
    if idx.ndim != 1 or not isinstance(n, int):
        ctx.freeze(data, axis, "Gather with scalar or multi-dim constant indices")
        for k in range(len(di)):
            ctx.freeze(y, axis + k, "Gather with scalar or multi-dim constant indices")
        return
    idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
    if len(idx):
        ctx.couple(data, axis, y, axis, idx, np.arange(len(idx)))
    else:
        ctx.unchanged(data, axis)
        ctx.unchanged(y, axis)
    dtype = ctx.const(idx_v).dtype

    def rewrite(rc):
        rd = rc.removed(data, axis)
        ry = rc.removed(y, axis)
        if not len(rd) and not len(ry):
            return
        keep = np.setdiff1d(np.arange(len(idx)), ry)
        new_pos = np.cumsum(~np.isin(np.arange(n), rd)) - 1
        rc.set_input_const(1, new_pos[idx[keep]].astype(dtype), f"{rc.node.name}_indices")

    ctx.on_prune(rewrite)


@rule("DepthToSpace")
def depth_to_space(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    r = int(ctx.attr("blocksize"))
    mode = ctx.attr("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    c = (ctx.dims(y) or [None, None])[1]
    if not isinstance(c, int):
        ctx.freeze_all("DepthToSpace with unknown channels")
        return
    out_c = np.arange(c)
    k = np.arange(r * r)
    if mode == "CRD":
        in_idx = (out_c[:, None] * r * r + k[None, :]).reshape(-1)
    else:
        in_idx = (k[None, :] * c + out_c[:, None]).reshape(-1)
    ctx.couple(x, 0, y, 0)
    ctx.couple(x, 1, y, 1, in_idx, np.repeat(out_c, r * r))


@rule("SpaceToDepth")
def space_to_depth(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    r = int(ctx.attr("blocksize"))
    c = (ctx.dims(x) or [None, None])[1]
    if not isinstance(c, int):
        ctx.freeze_all("SpaceToDepth with unknown channels")
        return
    in_c = np.arange(c)
    k = np.arange(r * r)
    out_idx = (k[None, :] * c + in_c[:, None]).reshape(-1)
    ctx.couple(x, 0, y, 0)
    ctx.couple(x, 1, y, 1, np.repeat(in_c, r * r), out_idx)


@rule("Expand")
def expand(node, ctx):
    x, shape_v = node.inputs
    y = node.outputs[0]
    ctx.structural(shape_v)
    target = ctx.const(shape_v)
    dx, dy = ctx.dims(x), ctx.dims(y)
    if target is None or dx is None or dy is None:
        ctx.freeze_all("Expand with a shape computed at run time")
        return
    ctx.broadcast([x], y)
    target = target.reshape(-1)
    toff = len(dy) - len(target)

    def rewrite(rc):
        new = target.copy()
        for j in range(len(dy)):
            r = len(rc.removed(y, j))
            if r and j - toff >= 0 and new[j - toff] > 1:
                new[j - toff] = dy[j] - r
        if not np.array_equal(new, target):
            rc.set_input_const(1, new, f"{rc.node.name}_shape")

    ctx.on_prune(rewrite)


@rule("Tile")
def tile(node, ctx):
    x, reps_v = node.inputs
    y = node.outputs[0]
    ctx.structural(reps_v)
    reps = ctx.const(reps_v)
    if reps is None:
        ctx.freeze_all("Tile with run-time repeats")
        return
    for ax, r in enumerate(reps.reshape(-1)):
        if r == 1:
            ctx.couple(x, ax, y, ax)


@rule(["Shape", "Size"])
def shape_of(node, ctx):
    """The shape is data: if a dim it reads changed, values downstream would change."""
    x = node.inputs[0]
    dx = ctx.dims(x)
    if dx is None:
        return
    start, end = 0, len(dx)
    if node.op_type == "Shape":
        start = int(ctx.attr("start", 0))
        end = int(ctx.attr("end", len(dx)))
        start = max(0, start + len(dx) if start < 0 else start)
        end = min(len(dx), end + len(dx) if end < 0 else end)
    for ax in range(len(dx)):
        if start <= ax < end:
            ctx.freeze(x, ax, f"{node.op_type} reads this dim at run time")
        else:
            ctx.unchanged(x, ax)
    ctx.structural(node.outputs[0])
