"""Sparse convolution kernels: 3x3 kernel patterns (PatDNN) and channel-block sparsity.

``conv_candidates(weight, bias, data_shape, strides, padding, dilation, groups)`` returns
the :class:`KernelCandidate` s that can compute one NCHW Conv with a constant weight
holding exact zeros; the rewriter measures them against the dense layer. Structure is
read from the zeros (``conv_structure``), never from metadata.

One kernel template covers both structures ("direct sparse conv"): the input is first
copied into a zero-padded buffer split into the stride's row/column phases and stored as
flat planes, so every tap of every output row reads one contiguous vector at a constant
offset whatever the stride. Then one parallel loop over (image, tile of whole output
rows, share of the output blocks): for each input-channel chunk (sized for L1) and output
block, accumulators ``[r, tile]`` live in registers while the kernel walks the block's
entries group by group. Each tap group has its own loop whose taps are constants in the
code (unrolled): for patterns a group is one pattern (1x1 channel blocks, only its k
taps), for channel blocks it is all kh*kw taps of an ``r x c`` block (each loaded
activation vector feeds ``r`` output channels). Output blocks are ordered so that every
thread's share holds the same work (PatDNN's filter reorder, for load balance). Bias
(and optionally ReLU) are fused; rows are stored with vector stores.

Only ``groups == 1`` is handled (else []); weights too dense for a gain give [].
``build_candidate`` / ``time_candidate`` compile and time one candidate alone (tests,
benchmarks). ``rewrite.py`` puts the chosen kernels into a model.
"""
from __future__ import annotations

import os

import numpy as np

from . import conv_structure as cs
from .base import KernelCandidate

# A pattern kernel pays off only when a good share of taps is gone; block kernels compute
# zeros inside kept blocks, so they need blocks that are mostly full.
MAX_PATTERN_TAP_DENSITY = 0.75
MAX_PATTERNS = 12
MAX_BLOCK_DENSITY = 0.6
MIN_BLOCK_FILL = 0.7
BLOCK_SHAPES = ((8, 1), (4, 1), (8, 4), (4, 4), (16, 1))
MAX_ACCUMULATORS = 8 * 16  # floats held per tile (about 8 zmm / 16 ymm registers)


def _out_hw(data_shape, kshape, strides, padding, dilation):
    _, _, h, w = data_shape
    kh, kw = kshape
    oh = (h + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    return oh, ow


def _parallel_parts() -> int:
    return max(1, os.cpu_count() or 1)


def _geometry(kh, kw, data_shape, strides, padding, dilation, rows):
    """(oh, ow, wq, tile length, tiles per image, flat pad length, largest tap offset)."""
    oh, ow = _out_hw(data_shape, (kh, kw), strides, padding, dilation)
    wq = _row_width(ow, kw, strides, dilation)
    tl = -(-(rows * wq) // 16) * 16
    nt = -(-oh // rows)
    max_off = ((kh - 1) * dilation[0] // strides[0]) * wq + ((kw - 1) * dilation[1]) // strides[1]
    return oh, ow, wq, tl, nt, nt * rows * wq + tl + max_off, max_off


def _kernel_source(*, name, dtype, n, i, h, w, o, kh, kw, strides, padding, dilation,
                   packed: cs.Packed, rows, parts, has_bias, relu) -> str:
    """TVMScript of one direct sparse conv (structure baked in as code and constants).

    The padded input is stored per (row phase, column phase) of the stride as flat planes
    of row width ``wq``; a tile is ``rows`` whole output rows, output pixel (a, x) of a
    tile is flat position ``a * wq + x``, and tap (dy, dx) reads the plane of its phases at
    a constant offset: every tap is one contiguous vector load whatever the stride
    (columns x >= ow are computed and dropped at the store). One parallel loop over
    (image, tile, part of the output blocks) does all the work after the padding copy.
    """
    r, c = packed.r, packed.c
    nob = packed.n_out_blocks
    ng = len(packed.groups)
    nch = packed.chunks
    e = max(len(packed.idx), 1)
    k = packed.vals.shape[2]
    sh, sw = strides
    dh, dw = dilation
    pt, pl = padding[0], padding[1]
    ip = -(-i // c) * c
    oh, ow, wq, tl, nt, _, max_off = _geometry(kh, kw, (n, i, h, w), strides, padding, dilation, rows)
    per_part = -(-nob // parts)
    z = f'T.{dtype}(0)'

    params = [f'data: T.Buffer(({n}, {i}, {h}, {w}), "{dtype}")',
              f'vals: T.Buffer(({e}, {c}, {k}, {r}), "{dtype}")',
              f'idx: T.Buffer(({e},), "int32")',
              f'ptr: T.Buffer(({nob * nch * ng + 1},), "int32")',
              f'order: T.Buffer(({nob},), "int32")']
    if has_bias:
        params.append(f'bias: T.Buffer(({nob * r},), "{dtype}")')
    params.append(f'out: T.Buffer(({n}, {o}, {oh}, {ow}), "{dtype}")')

    L = []
    L.append("@T.prim_func(s_tir=True, private=True)")
    L.append(f"def {name}({', '.join(params)}):")
    L.append('    T.func_attr({"tirx.noalias": True})')
    # a root block (s_tir form) so Relax's layout passes accept the kernel; buffers are
    # allocated there and moved by lowering to the innermost scope using them
    L.append('    with T.sblock("root"):')
    span_rows = -(-(tl + max_off) // wq)  # plane rows one tile reads
    L.append(f'        pad = T.sblock_alloc_buffer(({ip}, {sh}, {sw}, {span_rows * wq}), "{dtype}")')
    L.append(f'        acc = T.sblock_alloc_buffer(({r}, {tl}), "{dtype}", scope="local")')
    L.append(f'        part = T.sblock_alloc_buffer(({per_part * r}, {tl}), "{dtype}")')
    L.append('        with T.sblock("conv"):')
    # a single parallel loop (a second one costs a barrier, which on a busy machine costs
    # a scheduler time slice): each work item pads the input rows of its own tile
    L.append(f"            for wk in T.parallel({n * nt * parts}):")
    nn, tt = f"wk // {nt * parts}", f"wk // {parts} % {nt}"
    planes = sorted({((dy * dh) % sh, (dx * dw) % sw) for g in packed.groups for dy, dx in g})
    for py in range(sh):
        for px in range(sw):
            if (py, px) not in planes:  # e.g. a 1x1 stride-2 conv reads one phase of four
                continue
            # plane (py, px), column q holds input column q * sw + px - pl
            q_lo = max(0, -(-(pl - px) // sw))
            q_hi = min(wq, max(q_lo, -(-(w + pl - px) // sw)))
            L.append(f"                for ci, ar in T.grid({ip}, {span_rows}):")
            row = f"({tt} * {rows} + ar) * {sh} + {py - pt}"
            L.append(f"                    if ci < {i} and {row} >= 0 and {row} < {h}:")
            if q_lo > 0:
                L.append(f"                        for q in T.vectorized({q_lo}):")
                L.append(f"                            pad[ci, {py}, {px}, ar * {wq} + q] = {z}")
            if q_hi > q_lo:
                L.append(f"                        for q in T.vectorized({q_hi - q_lo}):")
                L.append(f"                            pad[ci, {py}, {px}, ar * {wq} + {q_lo} + q] = "
                         f"data[{nn}, ci, {row}, (q + {q_lo}) * {sw} + {px - pl}]")
            if wq > q_hi:
                L.append(f"                        for q in T.vectorized({wq - q_hi}):")
                L.append(f"                            pad[ci, {py}, {px}, ar * {wq} + {q_hi} + q] = {z}")
            L.append("                    else:")
            L.append(f"                        for q in T.vectorized({wq}):")
            L.append(f"                            pad[ci, {py}, {px}, ar * {wq} + q] = {z}")
    pp = f"wk % {parts}"
    # input-channel chunks outermost inside a tile: a chunk's input rows stay in L1
    # while every output block reads them; partial sums wait in `part` (cache-hot)
    L.append(f"                for ch, q in T.grid({nch}, {per_part}):")
    L.append(f"                    if {pp} * {per_part} + q < {nob}:")
    ob = f"order[{pp} * {per_part} + q]"
    fo = f"part[q * {r} + b, x]"
    init = f"bias[{ob} * {r} + b]" if has_bias else z
    if nch > 1:
        init = f"T.if_then_else(ch == 0, {init}, {fo})"
    I = "                        "
    L.append(f"{I}for b in T.unroll({r}):")
    L.append(f"{I}    for x in T.vectorized({tl}):")
    L.append(f"{I}        acc[b, x] = {init}")
    for g, taps in enumerate(packed.groups):
        pbase = f"({ob} * {nch} + ch) * {ng}"
        L.append(f"{I}for j in range(ptr[{pbase} + {g}], ptr[{pbase} + {g + 1}]):")
        inner = I + "    "
        if c > 1:
            L.append(f"{inner}for cc in T.unroll({c}):")
            inner += "    "
            chan, cidx = f"idx[j] * {c} + cc", "cc"
        else:
            chan, cidx = "idx[j]", "0"
        for t, (dy, dx) in enumerate(taps):
            ry, rx = dy * dh, dx * dw
            off = (ry // sh) * wq + rx // sw
            L.append(f"{inner}for b in T.unroll({r}):")
            L.append(f"{inner}    for x in T.vectorized({tl}):")
            L.append(f"{inner}        acc[b, x] = acc[b, x] + vals[j, {cidx}, {t}, b] * "
                     f"pad[{chan}, {ry % sh}, {rx % sw}, x + {off}]")
    L.append(f"{I}for b in T.unroll({r}):")
    L.append(f"{I}    for x in T.vectorized({tl}):")
    L.append(f"{I}        {fo} = acc[b, x]")
    # store whole rows (vectorised, no per-element bounds checks)
    L.append(f"                for q, b, a in T.grid({per_part}, {r}, {rows}):")
    oc = f"order[{pp} * {per_part} + q] * {r} + b"
    L.append(f"                    if {pp} * {per_part} + q < {nob} and {oc} < {o} and {tt} * {rows} + a < {oh}:")
    val = f"part[q * {r} + b, a * {wq} + x]"
    if relu:
        val = f"T.max({val}, {z})"
    L.append(f"                        for x in T.vectorized({ow}):")
    L.append(f"                            out[{nn}, {oc}, {tt} * {rows} + a, x] = {val}")
    return "\n".join(L) + "\n"


def _parse(src: str):
    from tvm.script import parser, tirx as T

    return parser.parse(src, extra_vars={"T": T})


def _candidate(label, weight, bias, data_shape, strides, padding, dilation, dtype,
               packed: cs.Packed, rows, relu, info) -> KernelCandidate:
    n, i, h, w = data_shape
    o, _, kh, kw = weight.shape
    oh, ow, wq, tl, nt, _, _ = _geometry(kh, kw, data_shape, strides, padding, dilation, rows)
    # split the output blocks when there are too few tiles to keep every thread busy
    threads = _parallel_parts()
    parts = max(1, min(packed.n_out_blocks, -(-4 * threads // (n * nt)) if n * nt < 4 * threads else 1))
    order = cs.balanced_order(packed.work, parts)
    src = _kernel_source(name="sparse_conv", dtype=dtype, n=n, i=i, h=h, w=w, o=o, kh=kh, kw=kw,
                         strides=strides, padding=padding, dilation=dilation, packed=packed,
                         rows=rows, parts=parts, has_bias=bias is not None, relu=relu)
    e = max(len(packed.idx), 1)
    vals = np.zeros((e,) + packed.vals.shape[1:], dtype=dtype)
    vals[:len(packed.idx)] = packed.vals
    idx = np.zeros(e, dtype=np.int32)
    idx[:len(packed.idx)] = packed.idx
    consts = [vals, idx, packed.ptr.astype(np.int32), order]
    if bias is not None:
        b = np.zeros(packed.n_out_blocks * packed.r, dtype=dtype)
        b[:o] = bias
        consts.append(b)
    info = dict(info, rows=rows, tile=tl, parts=parts, chunks=packed.chunks, relu=relu,
                entries=int(len(packed.idx)), macs_per_pixel=int(packed.work.sum()),
                dense_macs_per_pixel=int(o * i * kh * kw))
    return KernelCandidate(name=f"{label}_r{rows}", prim_func=_parse(src), constants=consts,
                           out_shape=(n, o, oh, ow), out_dtype=dtype, info=info)


# Rows padded to a multiple of the vector width when that costs <= 15% more columns:
# taps one row apart then read the very same vectors for consecutive output rows (loaded
# once) and dx = 0 taps are aligned; measured 15-20% faster on 56- and 28-wide layers.
ROW_ALIGN = 16
MAX_ROW_GROWTH = 1.15
L1_BYTES = 24 * 1024


def _row_width(ow, kw, strides, dilation) -> int:
    wq = ow + ((kw - 1) * dilation[1]) // strides[1]
    aligned = -(-wq // ROW_ALIGN) * ROW_ALIGN
    return aligned if aligned <= MAX_ROW_GROWTH * wq else wq  # of the 32 KiB L1d: the input rows one chunk of a tile reads


def _row_tiles(r: int, wq: int, oh: int) -> list[int]:
    """Output rows per tile: about 8 accumulator vectors (``r x tile / 16``; 16 spill
    with the pattern kernel); [] when even one row needs more than 16."""
    if r * (-(-wq // 16)) > 16:
        return []
    out = []
    for vectors in (8,):
        rows = max(1, min(oh, (vectors * 16 // r) // wq))
        if rows not in out and r * (-(-(rows * wq) // 16)) <= 16:
            out.append(rows)
    return out


def pack_for(weight, r, c, groups, entry_group, data_shape, strides, padding, dilation, rows):
    """``conv_structure.pack`` with input-channel chunks sized so the input rows one
    chunk of a tile reads stay in L1."""
    o, i, kh, kw = weight.shape
    _, _, _, tl, _, _, max_off = _geometry(kh, kw, data_shape, strides, padding, dilation, rows)
    per_channel = (tl + max_off) * 4 * min(strides[0] * strides[1], kh * kw)
    chunk_channels = max(c, (L1_BYTES // per_channel) // c * c)
    return cs.pack(weight, r, c, groups, entry_group, chunk_blocks=chunk_channels // c)


def _wq_oh(weight, data_shape, strides, padding, dilation):
    kh, kw = weight.shape[2:]
    oh, ow = _out_hw(data_shape, (kh, kw), strides, padding, dilation)
    return _row_width(ow, kw, strides, dilation), oh


def pattern_candidates(weight, bias, data_shape, strides, padding, dilation, dtype="float32",
                       *, relu=False) -> list[KernelCandidate]:
    o, i, kh, kw = weight.shape
    lib = cs.pattern_library(weight, MAX_PATTERNS)
    if lib is None:
        return []
    codes, pid = lib
    groups = [cs.taps_of(cd, kw, kh * kw) for cd in codes]
    kept_taps = sum(len(groups[p]) for p in pid[pid >= 0])
    tap_density = kept_taps / max(o * i * kh * kw, 1)
    if tap_density > MAX_PATTERN_TAP_DENSITY:
        return []
    info = {"structure": "pattern", "format": "pattern", "patterns": len(groups),
            "pattern_taps": sorted({len(g) for g in groups}), "tap_density": round(tap_density, 4),
            "kernels_kept": int((pid >= 0).sum()), "kernels": int(o * i)}
    geo = (data_shape, strides, padding, dilation)
    return [_candidate(f"pattern{max(len(g) for g in groups) if groups else 0}", weight, bias,
                       *geo, dtype, pack_for(weight, 1, 1, groups, pid, *geo, rows), rows, relu, info)
            for rows in _row_tiles(1, *_wq_oh(weight, *geo))]


def block_candidates(weight, bias, data_shape, strides, padding, dilation, dtype="float32",
                     *, relu=False, shapes=BLOCK_SHAPES, max_shapes=2) -> list[KernelCandidate]:
    o, i, kh, kw = weight.shape
    kmask = (weight != 0).reshape(o, i, -1).any(axis=2)
    taps = tuple((dy, dx) for dy in range(kh) for dx in range(kw))
    scored = []
    for r, c in shapes:
        if r > o or c > i:
            continue
        bm = cs.block_mask(weight, r, c)
        density = bm.mean() if bm.size else 0.0
        fill = kmask.sum() / max(bm.sum() * r * c, 1)
        if density <= MAX_BLOCK_DENSITY and fill >= MIN_BLOCK_FILL:
            scored.append((density * r * c / fill, r, c, bm, density, fill))
    # prefer the shape computing the fewest zeros, then the larger block (more reuse)
    scored.sort(key=lambda s: (round(s[0] / (s[1] * s[2]), 3), -s[1] * s[2]))
    out = []
    for _, r, c, bm, density, fill in scored[:max_shapes]:
        geo = (data_shape, strides, padding, dilation)
        rows_opts = _row_tiles(r, *_wq_oh(weight, *geo))
        if not rows_opts:
            continue
        rows = rows_opts[0]
        packed = pack_for(weight, r, c, [taps], np.where(bm, 0, -1), *geo, rows)
        info = {"structure": "block", "format": "bsr", "block": [r, c], "block_density": round(float(density), 4),
                "block_fill": round(float(fill), 4)}
        out.append(_candidate(f"block{r}x{c}", weight, bias, data_shape, strides, padding,
                              dilation, dtype, packed, rows, relu, info))
    return out


def conv_candidates(weight: np.ndarray, bias: np.ndarray | None, data_shape: tuple,
                    strides: tuple, padding: tuple, dilation: tuple, groups: int,
                    dtype: str = "float32", *, relu: bool = False) -> list[KernelCandidate]:
    """Sparse kernels for one NCHW Conv (see module docstring); [] when none applies.

    ``padding`` is (top, left, bottom, right). ``relu`` (not used by the generic rewriter)
    fuses a following ReLU into the store.
    """
    weight = np.asarray(weight)
    if groups != 1 or weight.ndim != 4 or len(data_shape) != 4 or weight.shape[1] != data_shape[1]:
        return []
    if not np.any(weight == 0):
        return []
    strides, dilation = tuple(int(s) for s in strides), tuple(int(d) for d in dilation)
    padding = tuple(int(p) for p in padding)
    data_shape = tuple(int(d) for d in data_shape)
    args = (weight.astype(dtype, copy=False), None if bias is None else np.asarray(bias, dtype),
            data_shape, strides, padding, dilation, dtype)
    cands = []
    if weight.shape[2:] == (3, 3):
        cands += pattern_candidates(*args, relu=relu)
    cands += block_candidates(*args, relu=relu)
    return cands


# ----------------------------------------------------------------------------- build / time
def build_candidate(cand: KernelCandidate, target=None):
    """Compile one candidate alone (for tests and per-layer timing); returns a callable
    ``f(data) -> out`` on numpy arrays and the compiled module."""
    import tvm

    from ..target import host_target, to_target

    tgt = to_target(target or host_target())
    lib = tvm.compile(tvm.IRModule({"main": cand.prim_func.with_attr("global_symbol", "main")}),
                      target=tgt)
    dev = tvm.cpu()
    consts = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in cand.constants]

    def run(data: np.ndarray) -> np.ndarray:
        out = tvm.runtime.tensor(np.zeros(cand.out_shape, cand.out_dtype), dev)
        lib["main"](tvm.runtime.tensor(np.ascontiguousarray(data), dev), *consts, out)
        return out.numpy()

    run.lib, run.consts, run.dev, run.out_shape = lib, consts, dev, cand.out_shape
    return run


def preallocated_call(run, data: np.ndarray):
    """A no-argument callable running a built candidate on `data` (buffers allocated once)."""
    import tvm

    args = [tvm.runtime.tensor(np.ascontiguousarray(data), run.dev), *run.consts,
            tvm.runtime.tensor(np.zeros(run.out_shape, np.float32), run.dev)]
    fn = run.lib["main"]
    return lambda: fn(*args)


def time_candidate(run, data: np.ndarray, repeats: int = 20, number: int = 5) -> float:
    """Median milliseconds of one call of a built candidate (timed inside the runtime)."""
    import tvm

    out = tvm.runtime.tensor(np.zeros(run.out_shape, np.float32), run.dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(data), run.dev), *run.consts, out]
    timer = run.lib.mod.time_evaluator("main", run.dev, number=number, repeat=repeats)
    res = sorted(timer(*args).results)
    return float(np.median(res) * 1e3)

