"""Sparsity masks by hand: unstructured, N:M, blocks (ragged edges), 3×3 patterns,
connectivity, and the option parser's errors."""
from __future__ import annotations

import numpy as np
import pytest

from graphprune.errors import UsageError
from graphprune.passes.sparsity import masks as M
from graphprune.passes.sparsity.spec import parse_spec

T, F = True, False


def test_unstructured_layer_and_row():
    s = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert (M.unstructured_mask(s, 0.5) == [[F, F], [T, T]]).all()
    assert (M.unstructured_mask(s, 0.5, per_row=True) == [[F, T], [F, T]]).all()
    assert M.unstructured_mask(s, 0.0).all()
    # 0.3 of 4 elements rounds to one zero
    assert (M.unstructured_mask(s, 0.3) == [[F, T], [T, T]]).all()


def test_nm_exact_and_property():
    row = np.array([[1, 4, 2, 3, 8, 7, 6, 5]], float)
    assert (M.nm_mask(row, 2, 4) == [[F, T, F, T, T, T, F, F]]).all()
    assert (M.nm_mask(row, 1, 4) == [[F, T, F, F, T, F, F, F]]).all()
    s = np.random.default_rng(0).random((16, 64))
    for n, m in ((2, 4), (4, 8), (1, 4)):
        k = M.nm_mask(s, n, m)
        assert (k.reshape(16, -1, m).sum(-1) == n).all()
    with pytest.raises(UsageError):
        M.nm_mask(np.ones((2, 6)), 2, 4)


def test_block_exact_whole_tiles():
    # 4x4, 2x2 tiles with means 1, 2 / 3, 4: 50% removes the tiles of mean 1 and 2
    s = np.kron(np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 2)))
    k = M.block_mask(s, 2, 2, 0.5)
    assert (k == np.kron(np.array([[F, F], [T, T]]), np.ones((2, 2), bool))).all()


def test_block_ragged_edges_partial_tiles():
    s = np.array([[9, 9, 1], [9, 9, 1], [2, 2, 9]], float)  # 2x2 tiles: 4 + 2 + 2 + 1 elements
    ids, n = M.tile_ids(3, 3, 2, 2, 3)
    assert n == 4 and (np.bincount(ids.ravel()) == [4, 2, 2, 1]).all()
    k = M.block_mask(s, 2, 2, 4 / 9)  # the two 2-element tiles of mean 1 and 2
    assert (k == [[T, T, F], [T, T, F], [F, F, T]]).all()


def test_block_segments_do_not_straddle_taps():
    # two segments of 3 columns (e.g. two kernel taps of 3 input channels), 1x2 blocks
    ids, n = M.tile_ids(1, 6, 1, 2, 3)
    assert ids.tolist() == [[0, 0, 1, 2, 2, 3]] and n == 4


def test_random_block_masks_are_whole_blocks():
    rng = np.random.default_rng(1)
    for r, c in ((1, 4), (4, 1), (8, 1), (4, 4), (3, 5)):
        s = rng.random((24, 40))
        k = M.block_mask(s, r, c, 0.75)
        ids, n = M.tile_ids(24, 40, r, c, 40)
        for t in range(n):
            vals = k[ids == t]
            assert vals.all() or not vals.any()
        assert abs((~k).mean() - 0.75) < r * c / k.size + 1e-9


def test_pattern_library_and_assignment():
    # 4 kernels, 9 taps: top-2 shapes {0,1} x2, {0,2} x1, {3,4} x1 -> library of 2: {0,1}, {0,2}
    s = np.zeros((4, 9))
    s[0, [0, 1]] = [5, 4]
    s[1, [0, 1]] = [3, 6]
    s[2, [0, 2]] = [5, 5]
    s[3, [3, 4, 2]] = [9, 9, 1]
    lib = M.pattern_library(s, 2, 2)
    assert [np.flatnonzero(p).tolist() for p in lib] == [[0, 1], [0, 2]]
    keep, idx = M.pattern_assign(s, lib)
    assert idx.tolist() == [0, 0, 1, 1]  # kernel 3 keeps {0,2}: retains 1 (vs 0 for {0,1})
    assert (keep.sum(1) == 2).all()


def test_connectivity_ratio():
    norms = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    assert M.connectivity_keep(norms, 0.4).tolist() == [T, F, T, F, T]


@pytest.mark.parametrize("fmt,kw,msg", [
    ("3:2", {}, "smaller than M"), ("foo", {"sparsity": 0.5}, "unknown sparsity format"),
    ("unstructured", {"sparsity": 1.0}, r"\[0, 1\)"), ("unstructured", {"sparsity": -0.1}, r"\[0, 1\)"),
    ("2:4", {"sparsity": 0.9}, "fixes the sparsity"), ("block:0x4", {"sparsity": 0.5}, ">= 1"),
    ("block:axb", {"sparsity": 0.5}, "expected RxC"), ("unstructured", {}, "needs a sparsity"),
    ("pattern:9", {}, "1..8"), ("pattern:4", {"sparsity": 0.5}, "fixes the sparsity"),
])
def test_spec_errors(fmt, kw, msg):
    with pytest.raises(UsageError, match=msg):
        parse_spec(fmt, **kw)


def test_spec_forms():
    assert parse_spec("2:4").sparsity == 0.5
    s = parse_spec("block", 0.9, block="8x1")
    assert (s.r, s.c, s.label) == (8, 1, "block:8x1")
    p = parse_spec("pattern:4", connectivity=0.25)
    assert abs(p.sparsity - (1 - 4 / 9 * 0.75)) < 1e-12
