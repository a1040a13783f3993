"""Data-movement ops: index maps between channel slots.

Concat/Split/Slice shift indices by offsets; Gather and Depth/SpaceToDepth permute or
replicate channels. Rewrites keep the structural constants (split sizes, slice bounds,
gather indices) in step with the removal. Reshape-like ops live in `reshape.py`.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.dependency.registry import rule
from graphprune.ir.constants import const_array


def _axis(ctx, v, default=0):
    a = int(ctx.attr("axis", default))
    r = len(ctx.dims(v) or ())
    return a + r if a < 0 else a


@rule("Concat")
def concat(node, ctx):
    y = node.outputs[0]
    if (dy := ctx.dims_or_freeze_all(y)) is None:
        return
    axis = _axis(ctx, y)
    if any(not isinstance((ctx.dims(v) or [None] * len(dy))[axis], int) for v in node.inputs):
        # concatenation along a run-time-sized axis (e.g. a KV cache along the sequence):
        # that axis stays, the others map one to one
        for v in node.inputs:
            for ax in range(len(dy)):
                if ax == axis:
                    ctx.freeze(v, ax, "Concat along a run-time-sized axis")
                else:
                    ctx.couple(v, ax, y, ax)
        ctx.freeze(y, axis, "Concat along a run-time-sized axis")
        return
    off = 0
    for v in node.inputs:
        d = ctx.dims(v)
        n = d[axis]
        for ax in range(len(dy)):
            if ax == axis:
                if n:
                    ctx.couple(v, ax, y, ax, np.arange(n), off + np.arange(n))
                else:
                    ctx.unchanged(v, ax)
            else:
                ctx.couple(v, ax, y, ax)
        if ctx.is_const(v):
            for ax in range(len(dy)):
                ctx.param(v, ax, "concat_const")
        off += n


@rule("Split")
def split(node, ctx):
    x, split_in = node.inputs[0], ctx.input(1)
    if (dx := ctx.dims_or_freeze_all(x)) is None:
        return
    axis = _axis(ctx, x)
    sizes = [(ctx.dims(o) or [None] * len(dx))[axis] for o in node.outputs]
    if not all(isinstance(s, int) for s in sizes):
        ctx.freeze_all("Split with unknown output sizes")
        return
    ctx.structural(split_in)
    off = 0
    for o, n in zip(node.outputs, sizes, strict=True):
        for ax in range(len(dx)):
            if ax == axis:
                ctx.couple(x, ax, o, ax, off + np.arange(n), np.arange(n))
            else:
                ctx.couple(x, ax, o, ax)
        off += n
    opset = ctx.opset

    def rewrite(rc):
        new = np.array([n - len(rc.removed(o, axis)) for o, n in zip(node.outputs, sizes, strict=True)], np.int64)
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


def _slice_runtime_bounds(ctx, x, y, rank: int, axes) -> None:
    """Bounds known only at run time: the sliced axes stay, the others map one to one."""
    n_axes = len(axes) if axes is not None else rank
    sliced = {int(a) + rank if a < 0 else int(a) for a in (axes if axes is not None else range(n_axes))}
    for ax in range(rank):
        if ax in sliced:
            ctx.freeze(x, ax, "Slice with run-time bounds on this axis")
            ctx.freeze(y, ax, "Slice with run-time bounds on this axis")
        else:
            ctx.couple(x, ax, y, ax)


def _slice_ranges(dx: list, starts, ends, axes: list[int], steps: list[int]) -> dict[int, tuple[int, int, int]]:
    """axis -> (index in the Slice's lists, clamped start, clamped end) for the unit-step
    slices of known-size axes; the other sliced axes are unmapped, hence frozen."""
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
    return ranges


@rule("Slice", since=10)
def slice_(node, ctx):
    x, y = node.inputs[0], node.outputs[0]
    dx, dy = ctx.dims(x), ctx.dims(y)
    ctx.structural(*node.inputs[1:])
    args = [ctx.const(v) if v is not None else None for v in node.inputs[1:5]]
    while len(args) < 4:
        args.append(None)
    starts, ends, axes, steps = args
    if dx is None or dy is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None):
        ctx.freeze_all("Slice with non-constant axes")
        return
    rank = len(dx)
    if starts is None or ends is None or (len(node.inputs) > 4 and node.inputs[4] is not None and steps is None):
        _slice_runtime_bounds(ctx, x, y, rank, axes)
        return
    axes = list(range(len(starts))) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes]
    steps = [1] * len(axes) if steps is None else [int(s) for s in steps]
    ranges = _slice_ranges(dx, starts, ends, axes, steps)
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
    if (dx := ctx.dims_or_freeze_all(x)) is not None:
        perm = ctx.attr("perm") or list(reversed(range(len(dx))))
        for out_ax, in_ax in enumerate(perm):
            ctx.couple(x, int(in_ax), y, out_ax)


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
    if ctx.is_const(data):
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


def _couple_blocks(node, ctx, space, mode: str) -> None:
    """DepthToSpace (`space` = its output) and SpaceToDepth (`space` = its input), one the
    inverse of the other: channel c of the space side goes with the r*r channels of the
    depth side that hold its blocks, k*C + c in DCR mode, c*r*r + k in CRD mode."""
    x, y = node.inputs[0], node.outputs[0]
    r = int(ctx.attr("blocksize"))
    c = (ctx.dims(space) or [None, None])[1]
    if not isinstance(c, int):
        ctx.freeze_all(f"{node.op_type} with unknown channels")
        return
    space_c = np.arange(c)
    k = np.arange(r * r)
    if mode == "CRD":
        depth_idx = (space_c[:, None] * r * r + k[None, :]).reshape(-1)
    else:
        depth_idx = (k[None, :] * c + space_c[:, None]).reshape(-1)
    space_idx = np.repeat(space_c, r * r)
    ctx.couple(x, 0, y, 0)
    if space is y:
        ctx.couple(x, 1, y, 1, depth_idx, space_idx)
    else:
        ctx.couple(x, 1, y, 1, space_idx, depth_idx)


@rule("DepthToSpace")
def depth_to_space(node, ctx):
    mode = ctx.attr("mode", "DCR")
    _couple_blocks(node, ctx, node.outputs[0], mode.decode() if isinstance(mode, bytes) else mode)


@rule("SpaceToDepth")
def space_to_depth(node, ctx):
    _couple_blocks(node, ctx, node.inputs[0], "DCR")


@rule("Tile")
def tile(node, ctx):
    x, reps_v = node.inputs
    y = node.outputs[0]
    ctx.structural(reps_v)
    reps = ctx.const(reps_v)
    if reps is None:
        ctx.freeze_all("Tile with run-time repeats")
        return
    dx = ctx.dims(x) or []
    for ax, r in enumerate(reps.reshape(-1)):
        if r == 1:
            ctx.couple(x, ax, y, ax)
        elif ax < len(dx) and isinstance(dx[ax], int) and dx[ax] > 1:
            # y[c + k*C] = x[c]: channel c is r elements of y; the pruned x tiles the same way
            n = dx[ax]
            ctx.couple(x, ax, y, ax, np.tile(np.arange(n), int(r)), np.arange(n * int(r)))


def _axes_read(shape_out: ir.Value, start: int, end: int, _depth: int = 0) -> set[int] | None:
    """Which dims a Shape output is actually used for: when every consumer is a Gather
    (constant indices) or a Slice (constant bounds) of it, only those; else None (all).
    A Cast or Identity keeps the positions (Paddle2ONNX casts the shape to int32 before
    slicing the batch size off it: read as 'all dims', it froze PP-OCR cls's channels)."""
    if shape_out.is_graph_output():  # the whole shape leaves the model
        return None
    read: set[int] = set()
    n = end - start
    for use in shape_out.uses():
        c = use.node
        if c.op_type in ("Cast", "Identity") and c.domain in ("", "ai.onnx") and _depth < 8:
            more = _axes_read(c.outputs[0], start, end, _depth + 1)
            if more is None:
                return None
            read |= more
        elif c.op_type == "Gather" and use.idx == 0 and const_array(c.inputs[1]) is not None:
            idx = const_array(c.inputs[1]).reshape(-1)
            read.update(start + (int(i) + n if i < 0 else int(i)) for i in idx)
        elif c.op_type == "Slice" and use.idx == 0 and all(const_array(v) is not None for v in c.inputs[1:3]):
            st, en = int(const_array(c.inputs[1]).reshape(-1)[0]), int(const_array(c.inputs[2]).reshape(-1)[0])
            step = int(const_array(c.inputs[4]).reshape(-1)[0]) if len(c.inputs) > 4 and c.inputs[4] is not None else 1
            read.update(start + k for k in range(n)[slice(st, en, step)])
        else:
            return None
    return read


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
    read = _axes_read(node.outputs[0], start, end) if node.op_type == "Shape" else None
    for ax in range(len(dx)):
        if start <= ax < end and (read is None or ax in read):
            ctx.freeze(x, ax, f"{node.op_type} reads this dim at run time")
        else:
            ctx.unchanged(x, ax)
    ctx.structural(node.outputs[0])
