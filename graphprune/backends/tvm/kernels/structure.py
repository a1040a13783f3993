"""Sparsity structure of a linear weight, and its packed forms (numpy only, no TVM).

A weight is ``W[out, in]`` (y = x · Wᵀ). Structure is read from the exact zeros of the
weight, never from metadata: a hint can be stale, the zeros cannot.

* BSR r×c: the weight is cut into blocks of r output rows × c input columns (ragged edges
  padded with zeros); a block is stored when any of its entries is nonzero. CSR is BSR 1×1.
  ``BSR.data[nnzb, r, c]``, ``BSR.indices[nnzb]`` (block column), ``BSR.indptr[rows+1]``.
* N:M: in every group of M consecutive input columns of a row at most N entries are
  nonzero. ``NM.values[out, groups, n]`` and ``NM.offsets[out, groups, n]`` (uint8: the
  column inside the group; a padded slot has value 0). One byte per kept value rather
  than 2 bits: the kernel reads it directly, and values dominate the bytes anyway.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# Block shapes (output rows × input columns) tried by default. Shapes spanning several
# output rows reuse each activation load across the rows (TVM_NOTES: that is what wins).
DEFAULT_BLOCKS: tuple[tuple[int, int], ...] = (
    (1, 1), (1, 4), (2, 1), (4, 1), (8, 1), (16, 1), (2, 2), (4, 2), (4, 4), (8, 4))


@dataclasses.dataclass
class BSR:
    shape: tuple[int, int]          # (out, in) of the dense weight
    block: tuple[int, int]          # (r, c)
    data: np.ndarray                # [nnzb, r, c]
    indices: np.ndarray             # [nnzb] int32, block column
    indptr: np.ndarray              # [block rows + 1] int32

    @property
    def nnzb(self) -> int:
        return int(self.data.shape[0])

    @property
    def block_rows(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def block_cols(self) -> int:
        return -(-self.shape[1] // self.block[1])

    def stored_fraction(self) -> float:
        """Stored values (nonzeros + zeros inside stored blocks) / dense size."""
        return self.nnzb * self.block[0] * self.block[1] / max(1, self.shape[0] * self.shape[1])


@dataclasses.dataclass
class NM:
    shape: tuple[int, int]
    n: int
    m: int
    values: np.ndarray              # [out, groups, n] float
    offsets: np.ndarray             # [out, groups, n] uint8, column inside the group


def sparsity(w: np.ndarray) -> float:
    """Fraction of exact zeros."""
    return float(np.count_nonzero(w == 0)) / max(1, w.size)


def _pad_to_blocks(w: np.ndarray, r: int, c: int) -> np.ndarray:
    out, inp = w.shape
    po, pi = -(-out // r) * r, -(-inp // c) * c
    if (po, pi) == (out, inp):
        return w
    padded = np.zeros((po, pi), dtype=w.dtype)
    padded[:out, :inp] = w
    return padded


def _block_nonzero(w: np.ndarray, r: int, c: int) -> np.ndarray:
    """[block rows, block cols] bool: does the block hold any nonzero?"""
    p = _pad_to_blocks(w != 0, r, c)
    return p.reshape(p.shape[0] // r, r, p.shape[1] // c, c).any(axis=(1, 3))


def pack_bsr(w: np.ndarray, r: int = 1, c: int = 1) -> BSR:
    """Dense W[out, in] -> BSR with r×c blocks (r=c=1: CSR)."""
    if w.ndim != 2:
        raise ValueError(f"pack_bsr needs a 2-D weight, got shape {w.shape}")
    p = _pad_to_blocks(w, r, c)
    nbr, nbc = p.shape[0] // r, p.shape[1] // c
    blocks = p.reshape(nbr, r, nbc, c).transpose(0, 2, 1, 3)      # [nbr, nbc, r, c]
    nz = (blocks != 0).reshape(nbr, nbc, r * c).any(axis=2)
    rows, cols = np.nonzero(nz)                                      # row-major order
    data = np.ascontiguousarray(blocks[rows, cols]).astype(w.dtype, copy=False)
    indptr = np.zeros(nbr + 1, dtype=np.int32)
    np.cumsum(nz.sum(axis=1), out=indptr[1:])
    return BSR(tuple(w.shape), (r, c), data, cols.astype(np.int32), indptr)


@dataclasses.dataclass
class BlockedCSR:
    """CSR whose nonzeros are grouped by tiles of `row_block` output rows × `k_block` input
    columns: tile-major (row tile, then column tile), then row inside the tile, then
    column. Lets a kernel sweep one column tile of the activations (L1-sized) for a whole
    row tile before moving on. Segment (rt, kt, r) = row rt*row_block + r restricted to
    columns [kt*k_block, (kt+1)*k_block) is data[ptr[i]:ptr[i+1]], i = (rt*k_tiles + kt)*row_block + r."""
    shape: tuple[int, int]
    row_block: int
    k_block: int
    data: np.ndarray                # [nnz] float
    cols: np.ndarray                # [nnz] int32, absolute input column
    ptr: np.ndarray                 # [row_tiles * k_tiles * row_block + 1] int32

    @property
    def row_tiles(self) -> int:
        return -(-self.shape[0] // self.row_block)

    @property
    def k_tiles(self) -> int:
        return -(-self.shape[1] // self.k_block)


def pack_csr_blocked(w: np.ndarray, row_block: int, k_block: int) -> BlockedCSR:
    """Dense W[out, in] -> BlockedCSR (ragged edges padded with empty segments)."""
    if w.ndim != 2:
        raise ValueError(f"pack_csr_blocked needs a 2-D weight, got shape {w.shape}")
    p = _pad_to_blocks(w, row_block, k_block)
    nrt, nkt = p.shape[0] // row_block, p.shape[1] // k_block
    tiles = p.reshape(nrt, row_block, nkt, k_block).transpose(0, 2, 1, 3)   # [rt, kt, r, kk]
    nz = tiles != 0
    ptr = np.zeros(nz[..., 0].size + 1, dtype=np.int32)
    np.cumsum(nz.sum(axis=3).reshape(-1), out=ptr[1:])
    rt, kt, r, kk = np.nonzero(nz)                                          # storage order
    return BlockedCSR(tuple(w.shape), row_block, k_block,
                      tiles[rt, kt, r, kk].astype(w.dtype, copy=False),
                      (kt * k_block + kk).astype(np.int32), ptr)


def unpack_csr_blocked(b: BlockedCSR) -> np.ndarray:
    seg = np.repeat(np.arange(len(b.ptr) - 1), np.diff(b.ptr))
    rows = (seg // (b.k_tiles * b.row_block)) * b.row_block + seg % b.row_block
    dense = np.zeros((b.row_tiles * b.row_block, b.k_tiles * b.k_block), dtype=b.data.dtype)
    dense[rows, b.cols] = b.data
    return dense[:b.shape[0], :b.shape[1]]


def unpack_bsr(b: BSR) -> np.ndarray:
    r, c = b.block
    dense = np.zeros((b.block_rows * r, b.block_cols * c), dtype=b.data.dtype)
    rows = np.repeat(np.arange(b.block_rows), np.diff(b.indptr))
    for k, (i, j) in enumerate(zip(rows, b.indices, strict=True)):
        dense[i * r:(i + 1) * r, j * c:(j + 1) * c] = b.data[k]
    return dense[:b.shape[0], :b.shape[1]]


def nm_structure(w: np.ndarray, ms: tuple[int, ...] = (4, 8, 16)) -> tuple[int, int] | None:
    """(n, m) with the smallest density n/m such that every group of m consecutive input
    columns (per row, last group zero-padded) has at most n nonzeros; None when no group
    size gives n <= m/2 (then N:M packing saves nothing over dense)."""
    best = None
    for m in ms:
        if w.shape[1] < m:
            continue
        p = _pad_to_blocks(w, 1, m)
        n = int((p.reshape(p.shape[0], -1, m) != 0).sum(axis=2).max(initial=0))
        n = max(n, 1)
        if 2 * n <= m and (best is None or n / m < best[0] / best[1]):
            best = (n, m)
    return best


def pack_nm(w: np.ndarray, n: int, m: int) -> NM:
    """Dense W[out, in] with at most n nonzeros per group of m columns -> NM."""
    p = _pad_to_blocks(w, 1, m)
    groups = p.reshape(p.shape[0], -1, m)
    nz = groups != 0
    if int(nz.sum(axis=2).max(initial=0)) > n:
        raise ValueError(f"weight is not {n}:{m} sparse")
    # stable order: nonzero columns first (ascending), then zero columns
    order = np.argsort(~nz, axis=2, kind="stable")[:, :, :n]
    vals = np.take_along_axis(groups, order, axis=2)
    return NM(tuple(w.shape), n, m, np.ascontiguousarray(vals).astype(w.dtype, copy=False),
              order.astype(np.uint8))


def unpack_nm(p: NM) -> np.ndarray:
    out, inp = p.shape
    g = p.values.shape[1]
    dense = np.zeros((out, g, p.m), dtype=p.values.dtype)
    np.put_along_axis(dense, p.offsets.astype(np.int64), p.values, axis=2)
    return dense.reshape(out, g * p.m)[:, :inp]


@dataclasses.dataclass
class Analysis:
    shape: tuple[int, int]
    sparsity: float
    blocks: dict                    # (r, c) -> {"block_sparsity", "stored_fraction"}
    nm: tuple[int, int] | None
    hint: dict | None = None        # metadata the sparsity pass wrote (not trusted)

    def good_blocks(self, max_overhead: float = 1.5, limit: int = 4) -> list[tuple[int, int]]:
        """Block shapes (besides CSR) that store at most `max_overhead` × the nonzeros,
        largest blocks first (they reuse loads best), at most `limit` of them."""
        nnz = max(1e-12, 1.0 - self.sparsity)
        ok = [(b, v) for b, v in self.blocks.items()
              if b != (1, 1) and v["block_sparsity"] > 0
              and v["stored_fraction"] <= max_overhead * nnz]
        ok.sort(key=lambda bv: (-(bv[0][0] * bv[0][1]), -bv[0][0]))
        return [b for b, _ in ok[:limit]]


def analyse(w: np.ndarray, blocks: tuple[tuple[int, int], ...] = DEFAULT_BLOCKS,
            hint: dict | None = None) -> Analysis:
    """Sparsity, per block shape the fraction of empty blocks and of stored values, N:M."""
    if w.ndim != 2:
        raise ValueError(f"analyse needs a 2-D weight, got shape {w.shape}")
    stats = {}
    for r, c in blocks:
        if r > w.shape[0] or c > w.shape[1]:
            continue
        nz = _block_nonzero(w, r, c)
        stats[(r, c)] = {"block_sparsity": 1.0 - float(nz.mean()) if nz.size else 0.0,
                         "stored_fraction": float(nz.sum()) * r * c / max(1, w.size)}
    return Analysis(tuple(w.shape), sparsity(w), stats, nm_structure(w), hint)


def log2_ceil(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))
