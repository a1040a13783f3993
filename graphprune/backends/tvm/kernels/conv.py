"""Sparse convolution kernels: 3x3 kernel patterns (PatDNN) and channel-block sparsity.

``conv_candidates(weight, bias, data_shape, strides, padding, dilation, groups)`` returns
the :class:`KernelCandidate` s that can compute one NCHW Conv with a constant weight
holding exact zeros; the rewriter measures them against the dense layer. Structure is
read from the zeros (``conv_structure``), never from metadata.

One kernel template covers both structures ("direct sparse conv"): the input is first
copied into a zero-padded buffer split into ``stride_w`` column phases, so that every tap
reads a contiguous row segment whatever the stride. Then, per output-channel block (the
parallel loop, blocks ordered so each thread gets the same work), per tile of ``yb``
output rows x ``xv`` output columns, accumulators ``[yb, r, xv]`` live in registers while
the kernel walks the block's entries group by group. Each tap group has its own loop whose
taps are constants in the code (unrolled): for patterns a group is one pattern (1x1
channel blocks, only k taps), for channel blocks it is all kh*kw taps of ``r x c`` blocks
(each loaded activation vector feeds ``r`` output channels). Bias (and optionally ReLU)
are fused into the store.

Only ``groups == 1`` is handled (else []); weights too dense for a gain give [].
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


def _x_tile(ow: int, limit: int = 64) -> int:
    """Columns per tile: the whole row if it fits, else equal chunks (little waste)."""
    chunks = -(-ow // limit)
    return -(-ow // chunks)


def _parallel_parts() -> int:
    return max(1, os.cpu_count() or 1)


def _kernel_source(*, name, dtype, n, i, h, w, o, oh, ow, kh, kw, strides, padding,
                   dilation, packed: cs.Packed, yb, xv, has_bias, relu) -> str:
    """TVMScript of one direct sparse conv (structure baked in as code and constants)."""
    r, c = packed.r, packed.c
    nob = packed.n_out_blocks
    ng = len(packed.groups)
    e = max(len(packed.idx), 1)
    k = packed.vals.shape[2]
    sh, sw = strides
    dh, dw = dilation
    pt, pl = padding[0], padding[1]
    nib = -(-i // c)
    ip = nib * c
    nyt, nxt = -(-oh // yb), -(-ow // xv)
    # padded input: rows any tap of any tile reads, columns split in sw phases
    hp = (nyt * yb - 1) * sh + (kh - 1) * dh + 1
    wq = nxt * xv + ((kw - 1) * dw) // sw
    z = f'T.{dtype}(0)'

    params = [f'data: T.Buffer(({n}, {i}, {h}, {w}), "{dtype}")',
              f'vals: T.Buffer(({e}, {c}, {k}, {r}), "{dtype}")',
              f'idx: T.Buffer(({e},), "int32")',
              f'ptr: T.Buffer(({nob * ng + 1},), "int32")',
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
    L.append(f'        pad = T.sblock_alloc_buffer(({n}, {ip}, {hp}, {sw}, {wq}), "{dtype}")')
    L.append(f'        acc = T.sblock_alloc_buffer(({yb}, {r}, {xv}), "{dtype}", scope="local")')
    L.append('        with T.sblock("pad"):')
    L.append(f"            for ni in T.parallel({n * ip}):")
    L.append(f"                for yy, ph, q in T.grid({hp}, {sw}, {wq}):")
    src_y, src_x = f"yy - {pt}", f"q * {sw} + ph - {pl}"
    L.append(f"                    pad[ni // {ip}, ni % {ip}, yy, ph, q] = T.if_then_else("
             f"ni % {ip} < {i} and {src_y} >= 0 and {src_y} < {h} and {src_x} >= 0 and {src_x} < {w}, "
             f"data[ni // {ip}, T.min(ni % {ip}, {i - 1}), T.max(T.min({src_y}, {h - 1}), 0), "
             f"T.max(T.min({src_x}, {w - 1}), 0)], {z})")
    # row tiles outer (parallel), output blocks inner: the input rows of one row tile
    # stay in cache while every output block reads them
    L.append('        with T.sblock("conv"):')
    L.append(f"            for nt in T.parallel({n * nyt}):")
    L.append(f"                for ob, xt in T.grid({nob}, {nxt}):")
    L.append(f"                    for a in T.unroll({yb}):")
    L.append(f"                        for b in T.unroll({r}):")
    L.append(f"                            for x in T.vectorized({xv}):")
    init = f"bias[order[ob] * {r} + b]" if has_bias else z
    L.append(f"                                acc[a, b, x] = {init}")
    for g, taps in enumerate(packed.groups):
        L.append(f"                    for j in range(ptr[order[ob] * {ng} + {g}], "
                 f"ptr[order[ob] * {ng} + {g + 1}]):")
        inner = "                        "
        if c > 1:
            L.append(f"                        for cc in T.unroll({c}):")
            inner += "    "
            chan = f"idx[j] * {c} + cc"
            cidx = "cc"
        else:
            chan, cidx = "idx[j]", "0"
        for t, (dy, dx) in enumerate(taps):
            col = dx * dw
            ph, q0 = col % sw, col // sw
            L.append(f"{inner}for a in T.unroll({yb}):")
            L.append(f"{inner}    for b in T.unroll({r}):")
            L.append(f"{inner}        for x in T.vectorized({xv}):")
            L.append(f"{inner}            acc[a, b, x] = acc[a, b, x] + vals[j, {cidx}, {t}, b] * "
                     f"pad[nt // {nyt}, {chan}, (nt % {nyt} * {yb} + a) * {sh} + {dy * dh}, {ph}, "
                     f"xt * {xv} + x + {q0}]")
    L.append(f"                    for a, b in T.grid({yb}, {r}):")
    L.append(f"                        for x in T.serial({xv}):")
    oc = f"order[ob] * {r} + b"
    L.append(f"                            if {oc} < {o} and nt % {nyt} * {yb} + a < {oh} and xt * {xv} + x < {ow}:")
    val = f"T.max(acc[a, b, x], {z})" if relu else "acc[a, b, x]"
    L.append(f"                                out[nt // {nyt}, {oc}, nt % {nyt} * {yb} + a, xt * {xv} + x] = {val}")
    return "\n".join(L) + "\n"


def _parse(src: str):
    from tvm.script import parser, tirx as T

    return parser.parse(src, extra_vars={"T": T})


def _candidate(label, weight, bias, data_shape, strides, padding, dilation, dtype,
               packed: cs.Packed, yb, xv, relu, info) -> KernelCandidate:
    n, i, h, w = data_shape
    o, _, kh, kw = weight.shape
    oh, ow = _out_hw(data_shape, (kh, kw), strides, padding, dilation)
    order = cs.balanced_order(packed.work, _parallel_parts())
    src = _kernel_source(name="sparse_conv", dtype=dtype, n=n, i=i, h=h, w=w, o=o, oh=oh,
                         ow=ow, kh=kh, kw=kw, strides=strides, padding=padding,
                         dilation=dilation, packed=packed, yb=yb, xv=xv,
                         has_bias=bias is not None, relu=relu)
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
    info = dict(info, yb=yb, xv=xv, relu=relu, entries=int(len(packed.idx)),
                macs_per_pixel=int(packed.work.sum()), dense_macs_per_pixel=int(o * i * kh * kw))
    return KernelCandidate(name=f"{label}_y{yb}x{xv}", prim_func=_parse(src), constants=consts,
                           out_shape=(n, o, oh, ow), out_dtype=dtype, info=info)


def _tiles(r: int, ow: int) -> list[tuple[int, int]]:
    """(rows, columns) per register tile: two shapes for the rewriter to measure."""
    xv = _x_tile(ow)
    tiles = []
    for yb in (4, 2, 1):
        if yb * r * xv <= MAX_ACCUMULATORS and (yb, xv) not in tiles:
            tiles.append((yb, xv))
    if not tiles:
        xv = _x_tile(ow, 16)
        tiles.append((1, xv))
    return tiles[:2]


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
    packed = cs.pack(weight, 1, 1, groups, pid)
    info = {"structure": "pattern", "patterns": len(groups),
            "pattern_taps": sorted({len(g) for g in groups}), "tap_density": round(tap_density, 4),
            "kernels_kept": int((pid >= 0).sum()), "kernels": int(o * i)}
    _, ow = _out_hw(data_shape, (kh, kw), strides, padding, dilation)
    return [_candidate(f"pattern{max(len(g) for g in groups) if groups else 0}", weight, bias,
                       data_shape, strides, padding, dilation, dtype, packed, yb, xv, relu, info)
            for yb, xv in _tiles(1, ow)]


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
    _, ow = _out_hw(data_shape, (kh, kw), strides, padding, dilation)
    out = []
    for _, r, c, bm, density, fill in scored[:max_shapes]:
        packed = cs.pack(weight, r, c, [taps], np.where(bm, 0, -1))
        info = {"structure": "block", "block": [r, c], "block_density": round(float(density), 4),
                "block_fill": round(float(fill), 4)}
        yb, xv = _tiles(r, ow)[0]
        out.append(_candidate(f"block{r}x{c}", weight, bias, data_shape, strides, padding,
                              dilation, dtype, packed, yb, xv, relu, info))
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

    from .. import adapter

    tgt = adapter._target(target or adapter.host_target())
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


def time_candidate(run, data: np.ndarray, repeats: int = 20, number: int = 5) -> float:
    """Median milliseconds of one call of a built candidate (timed inside the runtime)."""
    import tvm

    out = tvm.runtime.tensor(np.zeros(run.out_shape, np.float32), run.dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(data), run.dev), *run.consts, out]
    timer = run.lib.mod.time_evaluator("main", run.dev, number=number, repeat=repeats)
    res = sorted(timer(*args).results)
    return float(np.median(res) * 1e3)

