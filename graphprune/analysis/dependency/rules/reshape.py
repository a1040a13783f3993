"""Reshape-like ops: Reshape, Flatten, Squeeze, Unsqueeze, Expand.

A reshape is split into blocks of input axes ↔ output axes with equal element counts.
In a block of several axes, ONE input axis and ONE output axis carry the channels (with
the element map between them); the others keep their size (frozen):
* merge (several axes → one): the input axis that rules upstream coupled to a weight
  (heads merged with a batch axis), else the outermost (Flatten→Gemm, heads → hidden);
* split (one axis → several): when the split ends the tensor in two factors (hidden →
  heads × head_dim), the outer one: whole attention heads are the unit; otherwise the
  inner one (channel shuffle: the same position in every group). A factor that is only
  unstacked by scalar Gathers downstream (torch's packed q/k/v) is never chosen;
* regroup (several → several, e.g. (batch, heads·head_dim) ↔ (batch·heads, head_dim)):
  an axis pair whose removals are checked to be exact, keeping the most atoms.
Shape targets may be constants or, with dynamic batch/sequence, a Concat of run-time
pieces (from Shape) and constant pieces; only constant pieces are ever rewritten.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.analysis.dependency.registry import rule
from graphprune.ir.constants import const_array
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
    if len(si) != len(so) or any(din[a] is None or dout[b] is None for a, b in zip(si, so, strict=True)):
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
    for a, b in list(zip(si, so, strict=True)) + [(len(din), len(dout))]:
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
            _freeze_block(ctx, x, y, ii, jj, f"{reason}: regroups run-time-sized axes")
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
            continue
        pair = _couple_regrouped_block(ctx, x, y, dx, dy, ii, jj, reason)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _freeze_block(ctx, x, y, ii: list[int], jj: list[int], why: str) -> None:
    for a in ii:
        ctx.freeze(x, a, why)
    for b in jj:
        ctx.freeze(y, b, why)


def _couple_regrouped_block(ctx, x, y, dx, dy, ii: list[int], jj: list[int], reason: str) -> tuple[int, int] | None:
    """A block of several axes on one side: couple the one axis pair that carries the
    channels and freeze the rest; the (in_axis, out_axis) pair, or None if all froze."""
    chosen = _choose_axes(ctx, x, y, dx, dy, ii, jj)
    if chosen is None:
        _freeze_block(ctx, x, y, ii, jj, f"{reason}: axes regrouped")
        return None
    a, b, a_idx, b_idx = chosen
    ctx.couple(x, a, y, b, a_idx, b_idx)
    for k in ii:
        if k != a:
            ctx.freeze(x, k, f"{reason}: merged into another axis")
    for k in jj:
        if k != b:
            ctx.freeze(y, k, f"{reason}: split off another axis")
    return a, b


def _block_pairs(din: list[int], dout: list[int], a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(index along input axis a, index along output axis b) of every element of a reshape
    block (positions are within the block's own axes), without duplicates."""
    flat = np.arange(int(np.prod(din)))
    ai = np.unravel_index(flat, din)[a]
    bi = np.unravel_index(flat, dout)[b]
    code = np.unique(ai.astype(np.int64) * dout[b] + bi)
    return code // dout[b], code % dout[b]


def _removal_is_exact(din: list[int], dout: list[int], a: int, b: int, ai: np.ndarray, bi: np.ndarray) -> bool:
    """Whether removing whole atoms of the (a, b) element coupling from both sides leaves
    a reshape of the smaller tensor that moves every kept element where it was: checked
    on each atom alone and on every other atom."""
    from graphprune.analysis.dependency.graph import components

    na, nb = din[a], dout[b]
    comp = components(na + nb, np.asarray(ai), na + np.asarray(bi))
    n_atoms = int(comp.max()) + 1 if len(comp) else 0
    if n_atoms < 2:
        return False
    x = np.arange(int(np.prod(din))).reshape(din)
    y = x.reshape(dout)
    trials = [[k] for k in range(min(n_atoms, 16))] + [list(range(0, n_atoms, 2))]
    for removed in trials:
        gone = np.isin(comp, removed)
        keep_a, keep_b = np.flatnonzero(~gone[:na]), np.flatnonzero(~gone[na:])
        xs, ys = np.take(x, keep_a, axis=a), np.take(y, keep_b, axis=b)
        if xs.size != ys.size or not np.array_equal(xs.reshape(ys.shape), ys):
            return False
    return True


def _choose_axes(ctx, x, y, dx, dy, ii: list[int], jj: list[int]):
    """Pick the one input axis and the one output axis of a multi-axis reshape block that
    carry the channels, with their element map; None if no choice is exact.

    Input side: of the non-1 axes, one that rules upstream coupled to a weight (heads
    merged with a batch axis: the heads), else the outermost (Flatten→Gemm: channels).
    Output side: a split that ends the tensor into two factors is hidden → heads ×
    head_dim (the outer factor, whole heads); other splits keep the inner factor (channel
    shuffle). A factor that is only ever unstacked by scalar Gathers downstream (torch's
    packed q/k/v: [.., 3E] → [.., 3, E] then proj[0], proj[1], proj[2]) is never the one."""
    if not all(isinstance(dx[k], int) for k in ii) or not all(isinstance(dy[k], int) for k in jj):
        return None
    big_in = [k for k in ii if dx[k] != 1]
    big_out = [k for k in jj if dy[k] != 1 and not _unstacked(y, k)]
    if not big_in or not big_out:
        return None
    weighted = [k for k in big_in if ctx.carries_weights(x, k)]
    a = (weighted or big_in)[0]
    b_order = big_out if len(big_out) == 2 and jj[-1] == len(dy) - 1 else big_out[::-1]
    din, dout = [dx[k] for k in ii], [dy[k] for k in jj]
    if len(ii) == 1:  # split: input element e lands at digit b of e; always exact
        b = b_order[0]
        stride = int(np.prod([dy[k] for k in jj if k > b]))
        e = np.arange(dx[a])
        return a, b, e, (e // stride) % dy[b]
    if len(jj) == 1:  # merge: output element o comes from digit a of o; always exact
        b = jj[0]
        stride = int(np.prod([dx[k] for k in ii if k > a]))
        o = np.arange(dy[b])
        return a, b, (o // stride) % dx[a], o
    if int(np.prod(din)) > _MAX_REGROUP:
        return None
    # Regroup (e.g. (batch, heads·head_dim) → (batch·heads, head_dim) and back): of the
    # exact choices, the one that splits the channels upstream already tied into the most
    # atoms (the heads digit, not the batch digit).
    upstream = ctx.element_labels(x, a)
    best, best_atoms = None, 1
    for b in b_order:
        ai, bi = _block_pairs(din, dout, ii.index(a), jj.index(b))
        if not _removal_is_exact(din, dout, ii.index(a), jj.index(b), ai, bi):
            continue
        n = _atoms_with(upstream, dx[a], ai, dy[b], bi)
        if n > best_atoms:
            best, best_atoms = (a, b, ai, bi), n
    return best


def _atoms_with(upstream: np.ndarray | None, na: int, ai: np.ndarray, nb: int, bi: np.ndarray) -> int:
    """Atoms among the na elements once the (ai, bi) pairs join the upstream ties."""
    from graphprune.analysis.dependency.graph import components

    rows, cols = [ai], [na + bi]
    if upstream is not None:
        _, first = np.unique(upstream, return_index=True)
        rows.append(np.arange(na))
        cols.append(first[np.unique(upstream, return_inverse=True)[1]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    return len(np.unique(components(na + nb, r, c)[:na]))


_MAX_REGROUP = 1 << 22  # elements of a regrouped block we are willing to enumerate


_AXIS_MOVERS = ("Identity", "Unsqueeze", "Squeeze", "Transpose")


def _unstacked(value: ir.Value, axis: int, depth: int = 0) -> bool:
    """Every use of `value` reaches, through ops that only move axes, a Gather that picks
    one entry of `axis` with a scalar constant index: the axis indexes a stack of
    tensors (q, k, v), not channels."""
    uses = list(value.uses())
    if not uses or depth > 6:
        return False
    for use in uses:
        node, pos = use.node, use.idx
        if pos != 0:
            return False
        out_axis = _moved_axis(node, value, axis)
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx"):
            idx = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
            n_dims = len(value.shape) if value.shape is not None else 0
            g_axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
            if idx is None or idx.ndim != 0 or g_axis % max(n_dims, 1) != axis:
                return False
        elif out_axis is None or not _unstacked(node.outputs[0], out_axis, depth + 1):
            return False
    return True


def _moved_axis(node: ir.Node, value: ir.Value, axis: int) -> int | None:
    """Where `axis` of the input lands in the output of an axis-moving op (None: elsewhere
    or dropped)."""
    if node.op_type not in _AXIS_MOVERS or node.domain not in ("", "ai.onnx") or value.shape is None:
        return None
    rank = len(value.shape)
    if node.op_type == "Identity":
        return axis
    if node.op_type == "Transpose":
        perm = node.attributes["perm"].value if "perm" in node.attributes else list(range(rank))[::-1]
        return list(perm).index(axis)
    axes_v = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if axes_v is None and "axes" in node.attributes:
        axes_v = np.array(node.attributes["axes"].value)
    if axes_v is None:
        return None
    if node.op_type == "Unsqueeze":
        out_rank = rank + axes_v.size
        new = sorted(int(k) % out_rank for k in axes_v.reshape(-1))
        kept = [k for k in range(out_rank) if k not in new]
        return kept[axis]
    gone = {int(k) % rank for k in axes_v.reshape(-1)}
    if axis in gone:
        return None
    return axis - sum(1 for k in gone if k < axis)


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
        for _a, b in pairs:
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
