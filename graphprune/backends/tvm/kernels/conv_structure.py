"""Sparsity structure of a convolution weight, read from its exact zeros (numpy only).

A conv weight ``[O, I, kh, kw]`` is seen as an ``O x I`` grid of ``kh x kw`` kernels.
Two structures are exploited by the kernels of ``conv.py``:

* kernel patterns (PatDNN): every nonzero kernel keeps one of a few tap sets; whole-zero
  kernels (connectivity pruning) are skipped;
* channel blocks: the ``O x I`` grid is tiled by ``r x c`` blocks and only blocks holding a
  nonzero kernel are computed (all their taps, zeros inside the block included).

Both are packed into one format, "entries grouped by tap set": for each output-channel
block ``ob`` and tap group ``g`` the entries (input-channel blocks) are listed CSR-style,
each with its values ``[c, taps, r]``.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def tap_codes(weight: np.ndarray) -> np.ndarray:
    """``[O, I]`` int64 bitmask of the nonzero taps of each kernel (bit ``dy*kw + dx``)."""
    o, i, kh, kw = weight.shape
    nz = (weight != 0).reshape(o, i, kh * kw)
    return (nz.astype(np.int64) << np.arange(kh * kw, dtype=np.int64)).sum(axis=2)


def taps_of(code: int, kw: int, ntaps: int) -> tuple[tuple[int, int], ...]:
    return tuple(divmod(t, kw) for t in range(ntaps) if (code >> t) & 1)


def pattern_library(weight: np.ndarray, max_patterns: int = 12):
    """The kernel patterns of `weight`, or None when there are too many of them.

    Returns ``(codes, pid)``: ``codes`` the distinct tap bitmasks (most frequent first),
    ``pid[o, i]`` the pattern of each kernel (-1: an all-zero kernel). A rare mask that is
    a subset of a kept pattern is computed with that pattern (its missing taps are zeros),
    so stray exact zeros inside a pattern do not multiply the library.
    """
    codes = tap_codes(weight)
    uniq, counts = np.unique(codes[codes != 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    uniq = [int(u) for u in uniq[order]]
    kept: list[int] = []
    mapping: dict[int, int] = {}
    for u in uniq:  # frequent first: a rare mask joins the first kept superset
        sup = next((k for k, p in enumerate(kept) if (u & p) == u), None)
        if sup is not None:
            mapping[u] = sup
        elif len(kept) < max_patterns:
            mapping[u] = len(kept)
            kept.append(u)
        else:
            return None
    pid = np.full(codes.shape, -1, dtype=np.int64)
    for u, k in mapping.items():
        pid[codes == u] = k
    return kept, pid


def block_mask(weight: np.ndarray, r: int, c: int) -> np.ndarray:
    """``[ceil(O/r), ceil(I/c)]`` bool: blocks holding at least one nonzero weight."""
    o, i = weight.shape[:2]
    kmask = (weight != 0).reshape(o, i, -1).any(axis=2)
    ob, ib = -(-o // r), -(-i // c)
    padded = np.zeros((ob * r, ib * c), dtype=bool)
    padded[:o, :i] = kmask
    return padded.reshape(ob, r, ib, c).any(axis=(1, 3))


@dataclasses.dataclass
class Packed:
    """Entries grouped by (output block, tap group), ready to become kernel constants."""

    r: int                                  # output channels per block
    c: int                                  # input channels per block
    groups: list[tuple[tuple[int, int], ...]]  # tap list (dy, dx) of each group
    ptr: np.ndarray                         # int32 [OB*G + 1]
    idx: np.ndarray                         # int32 [E]: input-channel block of each entry
    vals: np.ndarray                        # [E, c, K, r], K = max taps of a group
    work: np.ndarray                        # [OB] multiply-adds per output pixel of each block
    chunks: int = 1                         # input-channel chunks (see pack)

    @property
    def n_out_blocks(self) -> int:
        return len(self.work)


def pack(weight: np.ndarray, r: int, c: int, groups: list[tuple[tuple[int, int], ...]],
         entry_group: np.ndarray, chunk_blocks: int | None = None) -> Packed:
    """Pack `weight` for blocks of ``r x c`` channels.

    ``entry_group[ob, ib]`` is the tap group of block (ob, ib), -1 for a block not computed.
    ``chunk_blocks``: input blocks per input-channel chunk; entries are then listed per
    (output block, chunk, group), ``ptr`` has ``OB * chunks * G + 1`` items.
    """
    o, i, kh, kw = weight.shape
    nob, nib = entry_group.shape
    padded = np.zeros((nob * r, nib * c, kh, kw), dtype=weight.dtype)
    padded[:o, :i] = weight
    k = max((len(g) for g in groups), default=1) or 1
    ng = len(groups)
    chunk_blocks = chunk_blocks or nib
    nch = -(-nib // chunk_blocks)
    obs, ibs = np.nonzero(entry_group >= 0)
    gs = entry_group[obs, ibs]
    chs = ibs // chunk_blocks
    order = np.lexsort((ibs, gs, chs, obs))  # by output block, chunk, group, input block
    obs, ibs, gs, chs = obs[order], ibs[order], gs[order], chs[order]
    counts = np.bincount((obs * nch + chs) * ng + gs, minlength=nob * nch * ng)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    vals = np.zeros((len(obs), c, k, r), dtype=weight.dtype)
    blocks = padded.reshape(nob, r, nib, c, kh, kw)
    for g, taps in enumerate(groups):
        sel = np.nonzero(gs == g)[0]
        if len(sel) == 0:
            continue
        for t, (dy, dx) in enumerate(taps):
            # blocks[ob, :, ib, :, dy, dx] is [r, c] -> vals[e, :, t, :] is [c, r]
            vals[sel, :, t, :] = blocks[obs[sel], :, ibs[sel], :, dy, dx].transpose(0, 2, 1)
    taps_per_entry = np.array([len(groups[g]) for g in gs], dtype=np.int64)
    work = np.bincount(obs, weights=taps_per_entry * r * c, minlength=nob)
    return Packed(r, c, list(groups), ptr, ibs.astype(np.int32), vals, work, nch)


def balanced_order(work: np.ndarray, parts: int) -> np.ndarray:
    """Output-block order for a parallel loop split into `parts` contiguous chunks.

    Longest-processing-time-first into `parts` bins of (near) equal count, bins
    concatenated: each thread's contiguous chunk then holds about the same work.
    """
    n = len(work)
    parts = max(1, min(parts, n))
    size = -(-n // parts)
    bins: list[list[int]] = [[] for _ in range(parts)]
    load = np.zeros(parts)
    for ob in np.argsort(-work, kind="stable"):
        open_bins = [b for b in range(parts) if len(bins[b]) < size]
        b = min(open_bins, key=lambda k: load[k])
        bins[b].append(int(ob))
        load[b] += work[ob]
    return np.array([ob for b in bins for ob in b], dtype=np.int32)
