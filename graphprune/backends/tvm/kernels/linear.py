"""Sparse linear kernels: y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias) (+ relu), W sparse.

Hand-written TVMScript, one template per format, specialised by shapes and the packed
structure (passed as constant buffers, not unrolled into code: TVM_NOTES measured LLVM
compile time exploding with indices-as-code).

Schedule (the same for every format): the work is split into tasks over (row tiles of x,
chunks of block rows of W), run in parallel. A task first copies its Mt rows of x
transposed into a [K, Mt] scratch, so that one nonzero W[n, k] multiplies a contiguous
vector x[m0:m0+Mt, k]: the vector lanes run along M, every format keeps its lanes full,
and a block of r output rows reuses each vector load r times (the win of 4×4 / 8×1).
Accumulators are r×Mt floats in a small "global" stack buffer (< 1 KiB: TVM keeps it on
the stack, LLVM promotes it to registers; "local" scope would go through
TVMBackendAllocWorkspace and stay in memory). No `name: T.int32 = ...` binding in the
inner loop: in TVM 0.27 those are spilled to memory and reloaded per iteration.

Parameters of every prim_func (base.KernelCandidate contract): x, packed constants...,
bias[N], y.
"""
from __future__ import annotations

import numpy as np

from . import structure
from .base import KernelCandidate

# Accumulator budget: r*Mt floats must stay < 1024 bytes (stack) and fit the register file.
_MAX_ACC_FLOATS = 128
_NEG_INF = -3.0e38
# CSR kernel (measured at 128×768 @ 768×3072, 90%: ±5% around these; see csr_prim_func).
_CSR_UNROLL = 4                 # accumulators per row: Mt/16 × 4 independent FMA chains
_CSR_ROW_BLOCK = 64             # output rows per tile: [64, Mt] results stay in L1
_CSR_XT_TILE_FLOATS = 12288     # k_block × Mt: 48 KiB of xt swept per column tile


def _tile_m(M: int, r: int) -> int:
    """Rows of x per task (vector lanes): 16 (one AVX-512 / four NEON registers) for
    blocks with several rows; 32 for single-row formats (two independent chains)."""
    want = 32 if r == 1 else 16
    want = min(want, max(1, _MAX_ACC_FLOATS // r))
    return max(4, min(want, structure.log2_ceil(M)))


def _chunks(M: int, Mt: int, rows: int, cores: int) -> int:
    """Split block rows into chunks so that there are >= 2 tasks per core."""
    tiles = -(-M // Mt)
    return max(1, min(rows, -(-2 * cores // tiles)))


def bsr_prim_func(M: int, K: int, N: int, r: int, c: int, nnzb: int, *, Mt: int, chunks: int,
                  relu: bool = False, out_shape: tuple | None = None):
    """TIR for BSR r×c (CSR: r=c=1). Constants: data[nnzb,r,c], indices[nnzb],
    indptr[ceil(N/r)+1], bias[N]."""
    from tvm.script import tirx as T

    YS = tuple(out_shape) if out_shape else (M, N)   # the layer's own output shape: no reshape copy

    nbr = -(-N // r)
    Kp = -(-K // c) * c
    nmt = -(-M // Mt)
    per = -(-nbr // chunks)
    nnzb = max(1, nnzb)                    # an all-zero weight still gets a (dummy) block
    lo_clamp = T.float32(0.0) if relu else T.float32(_NEG_INF)

    @T.prim_func
    def bsr_linear(x: T.Buffer((M, K), "float32"), data: T.Buffer((nnzb, r, c), "float32"),
                   indices: T.Buffer((nnzb,), "int32"), indptr: T.Buffer((nbr + 1,), "int32"),
                   bias: T.Buffer((N,), "float32"), y_out: T.Buffer(YS, "float32")):
        T.func_attr({"tir.noalias": True})
        y = T.decl_buffer((M, N), "float32", data=y_out.data)
        for task in T.parallel(nmt * chunks):
            xt = T.alloc_buffer((Kp * Mt,), "float32")
            acc = T.alloc_buffer((r * Mt,), "float32")
            for k in range(Kp):
                for mm in range(Mt):
                    xt[k * Mt + mm] = T.if_then_else(
                        (task // chunks) * Mt + mm < M and k < K,
                        x[T.min((task // chunks) * Mt + mm, M - 1), T.min(k, K - 1)],
                        T.float32(0))
            for ii in range(per):
                if (task % chunks) * per + ii < nbr:
                    for rr in T.unroll(r):
                        acc[T.Ramp(rr * Mt, 1, Mt)] = T.Broadcast(T.float32(0), Mt)
                    for jj in range(indptr[(task % chunks) * per + ii + 1]
                                    - indptr[(task % chunks) * per + ii]):
                        for kk in T.unroll(c):
                            for rr in T.unroll(r):
                                acc[T.Ramp(rr * Mt, 1, Mt)] = acc[T.Ramp(rr * Mt, 1, Mt)] + T.Broadcast(
                                    data[indptr[(task % chunks) * per + ii] + jj, rr, kk], Mt) * xt[
                                    T.Ramp((indices[indptr[(task % chunks) * per + ii] + jj] * c + kk) * Mt,
                                           1, Mt)]
                    for mm in range(Mt):
                        for rr in range(r):
                            if (task // chunks) * Mt + mm < M and ((task % chunks) * per + ii) * r + rr < N:
                                y[(task // chunks) * Mt + mm, ((task % chunks) * per + ii) * r + rr] = T.max(
                                    acc[rr * Mt + mm] + bias[((task % chunks) * per + ii) * r + rr], lo_clamp)

    return bsr_linear


def _csr_tile_macros(M: int, K: int, N: int, *, Kp: int, Mt: int, R: int, chunks: int, per: int, lo_clamp):
    """The two ends of csr_prim_func's kernel, as TVMScript macros (expanded in place):
    load_xt packs the task's Mt rows of x column-major into xt (zero padded to Kp), and
    store_y writes a row tile's [R, Mt] results (+ bias, clamped) into y."""
    from tvm.script import tirx as T

    @T.macro
    def load_xt(xt, x, task):
        for k in range(Kp):
            for mm in range(Mt):
                xt[k * Mt + mm] = T.if_then_else(
                    (task // chunks) * Mt + mm < M and k < K,
                    x[T.min((task // chunks) * Mt + mm, M - 1), T.min(k, K - 1)],
                    T.float32(0))

    @T.macro
    def store_y(y, yacc, bias, task, ib):
        for mm in range(Mt):
            for r in range(R):
                if (task // chunks) * Mt + mm < M and ((task % chunks) * per + ib) * R + r < N:
                    y[(task // chunks) * Mt + mm, ((task % chunks) * per + ib) * R + r] = T.max(
                        yacc[r * Mt + mm] + bias[((task % chunks) * per + ib) * R + r], lo_clamp)

    return load_xt, store_y


def csr_prim_func(M: int, K: int, N: int, nnz: int, *, Mt: int, row_block: int, k_block: int,
                  chunks: int, unroll: int = _CSR_UNROLL, relu: bool = False, out_shape: tuple | None = None):
    """TIR for unstructured sparsity (structure.BlockedCSR). Constants: data[nnz],
    offsets[nnz] (column * Mt: the start of its vector in xt, no multiply in the loop),
    ptr[segments + 1], bias[N].

    Differs from the BSR template where unstructured weights need it: each nonzero feeds
    only its own row, so (a) a row's nonzeros go round-robin into `unroll` accumulators
    (more independent FMA chains than the Mt/16 of one row); (b) a row tile is swept one
    column tile at a time, so the part of xt in use stays near L1; (c) results collect in
    a [row_block, Mt] buffer written to y once per row tile, along y's rows (writing one
    output column at a time strides y by N floats: at N = 3072 those stores all hit one
    L1 set, which cost more than the rest of the kernel at 90% sparsity).
    """
    from tvm.script import tirx as T

    YS = tuple(out_shape) if out_shape else (M, N)   # the layer's own output shape: no reshape copy

    R, U = row_block, unroll
    nrt, nkt = -(-N // R), -(-K // k_block)
    Kp = nkt * k_block
    nmt = -(-M // Mt)
    per = -(-nrt // chunks)
    nnz = max(1, nnz)                      # an all-zero weight still gets a (dummy) entry
    lo_clamp = T.float32(0.0) if relu else T.float32(_NEG_INF)
    load_xt, store_y = _csr_tile_macros(M, K, N, Kp=Kp, Mt=Mt, R=R, chunks=chunks, per=per, lo_clamp=lo_clamp)

    @T.prim_func
    def csr_linear(x: T.Buffer((M, K), "float32"), data: T.Buffer((nnz,), "float32"),
                   offsets: T.Buffer((nnz,), "int32"), ptr: T.Buffer((nrt * nkt * R + 1,), "int32"),
                   bias: T.Buffer((N,), "float32"), y_out: T.Buffer(YS, "float32")):
        T.func_attr({"tir.noalias": True})
        y = T.decl_buffer((M, N), "float32", data=y_out.data)
        for task in T.parallel(nmt * chunks):
            xt = T.alloc_buffer((Kp * Mt,), "float32")
            yacc = T.alloc_buffer((R * Mt,), "float32")
            acc = T.alloc_buffer((U * Mt,), "float32")
            load_xt(xt, x, task)
            for ib in range(per):
                if (task % chunks) * per + ib < nrt:
                    for kt in range(nkt):
                        for r in range(R):
                            for u in T.unroll(U):
                                acc[T.Ramp(u * Mt, 1, Mt)] = T.Broadcast(T.float32(0), Mt)
                            # segment i = ((task % chunks) * per + ib) * nkt + kt) * R + r
                            for jj in range((ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r + 1]
                                             - ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r]) // U):
                                for u in T.unroll(U):
                                    acc[T.Ramp(u * Mt, 1, Mt)] = acc[T.Ramp(u * Mt, 1, Mt)] + T.Broadcast(
                                        data[ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r] + jj * U + u],
                                        Mt) * xt[T.Ramp(offsets[ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r]
                                                                + jj * U + u], 1, Mt)]
                            # the last (count % U) nonzeros of the segment
                            for u in T.unroll(U - 1):
                                if u < (ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r + 1]
                                        - ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r]) % U:
                                    acc[T.Ramp(u * Mt, 1, Mt)] = acc[T.Ramp(u * Mt, 1, Mt)] + T.Broadcast(
                                        data[ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r + 1] + u
                                             - (ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r + 1]
                                                - ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r]) % U],
                                        Mt) * xt[T.Ramp(offsets[
                                            ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r + 1] + u
                                            - (ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r + 1]
                                               - ptr[(((task % chunks) * per + ib) * nkt + kt) * R + r]) % U],
                                            1, Mt)]
                            if kt == 0:
                                yacc[T.Ramp(r * Mt, 1, Mt)] = acc[T.Ramp(0, 1, Mt)]
                            else:
                                yacc[T.Ramp(r * Mt, 1, Mt)] = yacc[T.Ramp(r * Mt, 1, Mt)] + acc[T.Ramp(0, 1, Mt)]
                            for u in T.unroll(U - 1):
                                yacc[T.Ramp(r * Mt, 1, Mt)] = yacc[T.Ramp(r * Mt, 1, Mt)] + acc[
                                    T.Ramp((u + 1) * Mt, 1, Mt)]
                    store_y(y, yacc, bias, task, ib)

    return csr_linear


def nm_prim_func(M: int, K: int, N: int, n: int, m: int, *, Mt: int, chunks: int,
                 relu: bool = False, out_shape: tuple | None = None):
    """TIR for N:M. Constants: values[N, G, n], offsets[N, G, n] (uint8), bias[N]."""
    from tvm.script import tirx as T

    YS = tuple(out_shape) if out_shape else (M, N)   # the layer's own output shape: no reshape copy

    G = -(-K // m)
    Kp = G * m
    nmt = -(-M // Mt)
    per = -(-N // chunks)
    lo_clamp = T.float32(0.0) if relu else T.float32(_NEG_INF)

    @T.prim_func
    def nm_linear(x: T.Buffer((M, K), "float32"), values: T.Buffer((N, G, n), "float32"),
                  offsets: T.Buffer((N, G, n), "uint8"), bias: T.Buffer((N,), "float32"),
                  y_out: T.Buffer(YS, "float32")):
        T.func_attr({"tir.noalias": True})
        y = T.decl_buffer((M, N), "float32", data=y_out.data)
        for task in T.parallel(nmt * chunks):
            xt = T.alloc_buffer((Kp * Mt,), "float32")
            acc = T.alloc_buffer((Mt,), "float32")
            for k in range(Kp):
                for mm in range(Mt):
                    xt[k * Mt + mm] = T.if_then_else(
                        (task // chunks) * Mt + mm < M and k < K,
                        x[T.min((task // chunks) * Mt + mm, M - 1), T.min(k, K - 1)],
                        T.float32(0))
            for ii in range(per):
                if (task % chunks) * per + ii < N:
                    acc[T.Ramp(0, 1, Mt)] = T.Broadcast(T.float32(0), Mt)
                    for g in range(G):
                        for t in T.unroll(n):
                            acc[T.Ramp(0, 1, Mt)] = acc[T.Ramp(0, 1, Mt)] + T.Broadcast(
                                values[(task % chunks) * per + ii, g, t], Mt) * xt[T.Ramp(
                                    (g * m + T.Cast("int32", offsets[(task % chunks) * per + ii, g, t])) * Mt,
                                    1, Mt)]
                    for mm in range(Mt):
                        if (task // chunks) * Mt + mm < M:
                            y[(task // chunks) * Mt + mm, (task % chunks) * per + ii] = T.max(
                                acc[mm] + bias[(task % chunks) * per + ii], lo_clamp)

    return nm_linear


def _bias(bias, N: int) -> np.ndarray:
    if bias is None:
        return np.zeros(N, np.float32)
    return np.ascontiguousarray(np.asarray(bias, np.float32).reshape(N))


def bsr_candidate(w: np.ndarray, bias, M: int, r: int, c: int, *, cores: int = 4,
                  relu: bool = False, out_shape: tuple | None = None) -> KernelCandidate:
    """`out_shape`: the layer's output shape (M·N elements, e.g. [1, M, N]) when the kernel
    should write it directly (no reshape copy after it); default [M, N]."""
    N, K = w.shape
    if (r, c) == (1, 1):
        return csr_candidate(w, bias, M, cores=cores, relu=relu, out_shape=out_shape)
    packed = structure.pack_bsr(np.asarray(w, np.float32), r, c)
    data, indices = packed.data, packed.indices
    if packed.nnzb == 0:                   # keep buffers non-empty; indptr says "no blocks"
        data = np.zeros((1, r, c), np.float32)
        indices = np.zeros(1, np.int32)
    Mt = _tile_m(M, r)
    chunks = _chunks(M, Mt, packed.block_rows, cores)
    name = "csr" if (r, c) == (1, 1) else f"bsr{r}x{c}"
    return KernelCandidate(
        name=name,
        prim_func=bsr_prim_func(M, K, N, r, c, packed.nnzb, Mt=Mt, chunks=chunks, relu=relu,
                                out_shape=out_shape),
        constants=[data, indices, packed.indptr, _bias(bias, N)],
        out_shape=tuple(out_shape or (M, N)),
        info={"format": "csr" if (r, c) == (1, 1) else "bsr", "block": [r, c],
              "nnz": int(np.count_nonzero(w)), "stored_values": int(packed.nnzb * r * c),
              "tile_m": Mt, "chunks": chunks, "fused": ["bias"] + (["relu"] if relu else [])},
    )


def csr_candidate(w: np.ndarray, bias, M: int, *, cores: int = 4, relu: bool = False,
                  row_block: int | None = None, k_block: int | None = None,
                  out_shape: tuple | None = None) -> KernelCandidate:
    """Unstructured sparsity (CSR); tile sizes default to the measured ones."""
    N, K = w.shape
    w = np.asarray(w, np.float32)
    Mt = _tile_m(M, 1)
    R = row_block or min(_CSR_ROW_BLOCK, N)
    if k_block is None:                    # equal column tiles, each within the xt budget
        nkt = -(-K // max(1, _CSR_XT_TILE_FLOATS // Mt))
        k_block = -(-K // nkt)
    packed = structure.pack_csr_blocked(w, R, k_block)
    nnz = int(packed.data.size)
    data, offsets = packed.data, packed.cols * np.int32(Mt)
    if nnz == 0:                           # keep buffers non-empty; ptr says "no entries"
        data, offsets = np.zeros(1, np.float32), np.zeros(1, np.int32)
    chunks = _chunks(M, Mt, packed.row_tiles, cores)
    return KernelCandidate(
        name="csr",
        prim_func=csr_prim_func(M, K, N, nnz, Mt=Mt, row_block=R, k_block=k_block, chunks=chunks,
                                relu=relu, out_shape=out_shape),
        constants=[data, offsets, packed.ptr, _bias(bias, N)],
        out_shape=tuple(out_shape or (M, N)),
        info={"format": "csr", "block": [1, 1], "nnz": nnz, "stored_values": nnz, "tile_m": Mt,
              "chunks": chunks, "row_block": R, "k_block": k_block,
              "fused": ["bias"] + (["relu"] if relu else [])},
    )


def nm_candidate(w: np.ndarray, bias, M: int, n: int, m: int, *, cores: int = 4,
                 relu: bool = False, out_shape: tuple | None = None) -> KernelCandidate:
    N, K = w.shape
    packed = structure.pack_nm(np.asarray(w, np.float32), n, m)
    Mt = _tile_m(M, 1)
    chunks = _chunks(M, Mt, N, cores)
    return KernelCandidate(
        name=f"nm{n}:{m}",
        prim_func=nm_prim_func(M, K, N, n, m, Mt=Mt, chunks=chunks, relu=relu, out_shape=out_shape),
        constants=[packed.values, packed.offsets, _bias(bias, N)],
        out_shape=tuple(out_shape or (M, N)),
        info={"format": "n:m", "n": n, "m": m, "nnz": int(np.count_nonzero(w)),
              "stored_values": int(packed.values.size), "tile_m": Mt, "chunks": chunks,
              "fused": ["bias"] + (["relu"] if relu else [])},
    )


def linear_candidates(w: np.ndarray, bias, M: int, *, dtype: str = "float32", cores: int = 4,
                      relu: bool = False, max_blocks: int = 3,
                      analysis: structure.Analysis | None = None,
                      out_shape: tuple | None = None) -> list[KernelCandidate]:
    """Kernels computing x[M, K] · w[N, K]ᵀ (+ bias) (+ relu) from the zeros of `w`.

    CSR always; the block shapes whose stored values stay within 1.5× the nonzeros
    (largest first, at most `max_blocks`); N:M when every group obeys it. Only float32.
    """
    if dtype != "float32" or w.ndim != 2:
        return []
    a = analysis or structure.analyse(w)
    cands = [bsr_candidate(w, bias, M, 1, 1, cores=cores, relu=relu, out_shape=out_shape)]
    for r, c in a.good_blocks(limit=max_blocks):
        cands.append(bsr_candidate(w, bias, M, r, c, cores=cores, relu=relu, out_shape=out_shape))
    if a.nm is not None:
        cands.append(nm_candidate(w, bias, M, *a.nm, cores=cores, relu=relu, out_shape=out_shape))
    for cand in cands:
        cand.info["sparsity"] = round(a.sparsity, 4)
    return cands
