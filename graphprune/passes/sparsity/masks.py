"""Mask selection on a layer's *logical* weight matrix ``[out, in]`` (True = keep).

Every function here is pure numpy on scores (higher = more important) so the formats can
be checked by hand. Columns of the logical matrix come in *segments* of ``seg_len``
consecutive input channels: a Gemm/MatMul has one segment (all of K); a convolution has
one segment per kernel tap (see `targets.Target.logical`), so N:M groups never straddle two
taps (conv blocks are tiled in a channel-major order instead: `sparsify.block_layout`).

Conventions: an N:M group is M consecutive columns of one row (along the input/reduction
axis) holding at most N nonzeros; a block ``r×c`` spans r OUTPUT channels (rows) and c
INPUT channels (columns), with partial blocks at the ragged edges.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphprune.errors import UsageError


def zeros_for(total: int, sparsity: float) -> int:
    return int(round(float(sparsity) * total))


# ---- units: elements or tiles, selected per layer or globally ------------------------------

def tile_ids(rows: int, cols: int, r: int, c: int, seg_len: int) -> tuple[np.ndarray, int]:
    """Tile index of every element of a ``rows × cols`` matrix tiled by r×c inside each
    segment of ``seg_len`` columns (edge tiles are partial); and the number of tiles."""
    j = np.arange(cols)
    per_seg = -(-seg_len // c)
    col_tile = (j // seg_len) * per_seg + (j % seg_len) // c
    n_col_tiles = (cols // seg_len) * per_seg
    row_tile = np.arange(rows) // r
    ids = row_tile[:, None] * n_col_tiles + col_tile[None, :]
    return ids, int(row_tile[-1] + 1) * n_col_tiles if rows else 0


def tile_scores(scores: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean score and element count of every tile (the mean keeps partial edge tiles
    comparable with whole ones)."""
    size = np.bincount(ids.ravel(), minlength=n).astype(np.int64)
    total = np.bincount(ids.ravel(), weights=scores.ravel(), minlength=n)
    return total / np.maximum(size, 1), size


def select_units(scores: list[np.ndarray], sizes: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Zero the lowest-scoring units (over all the given arrays together) until the zeroed
    element count is as close as possible to ``sparsity`` of all elements. Returns, per
    array, a bool array: True = unit removed."""
    flat = np.concatenate([np.asarray(s, np.float64).ravel() for s in scores])
    size = np.concatenate([np.asarray(z, np.int64).ravel() for z in sizes])
    target = float(sparsity) * size.sum()
    order = np.argsort(flat, kind="stable")
    cum = np.concatenate([[0], np.cumsum(size[order])])
    k = int(np.argmin(np.abs(cum - target)))
    removed = np.zeros(len(flat), bool)
    removed[order[:k]] = True
    out, at = [], 0
    for s in scores:
        out.append(removed[at:at + np.size(s)].reshape(np.shape(s)))
        at += np.size(s)
    return out


def unstructured_mask(scores: np.ndarray, sparsity: float, per_row: bool = False) -> np.ndarray:
    """Keep-mask removing the lowest ``sparsity`` fraction of the layer (or of each row)."""
    scores = np.asarray(scores, np.float64)
    if not per_row:
        (gone,) = select_units([scores], [np.ones(scores.shape, np.int64)], sparsity)
        return ~gone
    k = zeros_for(scores.shape[1], sparsity)
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    keep = np.ones(scores.shape, bool)
    np.put_along_axis(keep, order, False, axis=1)
    return keep


def nm_mask(scores: np.ndarray, n: int, m: int, seg_len: int | None = None) -> np.ndarray:
    """Keep the N highest of every M consecutive columns of each row. The segment length
    (and so the row length) must be a multiple of M."""
    scores = np.asarray(scores, np.float64)
    rows, cols = scores.shape
    seg_len = cols if seg_len is None else seg_len
    if seg_len % m or cols % m:
        raise UsageError(f"{n}:{m} needs input segments that are multiples of {m} (got {seg_len})")
    g = scores.reshape(rows, cols // m, m)
    drop = np.argsort(g, axis=2, kind="stable")[:, :, : m - n]
    keep = np.ones(g.shape, bool)
    np.put_along_axis(keep, drop, False, axis=2)
    return keep.reshape(rows, cols)


def block_mask(scores: np.ndarray, r: int, c: int, sparsity: float, seg_len: int | None = None) -> np.ndarray:
    """Keep-mask of whole r×c tiles (partial at the edges) removing ≈ ``sparsity`` of
    the elements, lowest mean score first."""
    scores = np.asarray(scores, np.float64)
    ids, n = tile_ids(*scores.shape, r, c, scores.shape[1] if seg_len is None else seg_len)
    ts, size = tile_scores(scores, ids, n)
    (gone,) = select_units([ts], [size], sparsity)
    return ~gone[ids]


# ---- 3×3 kernel patterns (PatDNN-style) and connectivity ------------------------------------

def pattern_library(kernel_scores: np.ndarray, k: int, n_patterns: int) -> np.ndarray:
    """The ``n_patterns`` most frequent top-k shapes among kernels (rows of
    ``kernel_scores``, one column per tap), as a bool array [patterns, taps]. Ties in
    frequency go to the shape seen first in a lexicographic order, so the library is
    deterministic."""
    kernel_scores = np.asarray(kernel_scores, np.float64)
    taps = kernel_scores.shape[1]
    if not 0 < k <= taps:
        raise UsageError(f"pattern_k={k} must be in 1..{taps}")
    top = np.sort(np.argsort(-kernel_scores, axis=1, kind="stable")[:, :k], axis=1)
    counts = Counter(map(tuple, top.tolist()))
    chosen = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_patterns]
    lib = np.zeros((len(chosen), taps), bool)
    for i, (shape, _) in enumerate(chosen):
        lib[i, list(shape)] = True
    return lib


def pattern_assign(kernel_scores: np.ndarray, library: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each kernel keeps the library pattern that retains the most score: (keep mask
    [kernels, taps], chosen pattern index per kernel)."""
    kept = np.asarray(kernel_scores, np.float64) @ library.T.astype(np.float64)
    idx = np.argmax(kept, axis=1)
    return library[idx], idx


def connectivity_keep(kernel_norms: np.ndarray, ratio: float) -> np.ndarray:
    """Keep-mask over kernels removing the ``ratio`` fraction with the lowest norm."""
    (gone,) = select_units([np.asarray(kernel_norms)], [np.ones(np.shape(kernel_norms), np.int64)], ratio)
    return ~gone
