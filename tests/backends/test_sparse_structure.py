"""Sparse weight structure and packing (numpy only): round trips and detection."""
from __future__ import annotations

import numpy as np
import pytest

from graphprune.backends.tvm.kernels import structure as st


def _weight(shape, sparsity, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0
    return w


@pytest.mark.parametrize("shape", [(8, 8), (13, 29), (1, 5), (64, 3)])
@pytest.mark.parametrize("block", [(1, 1), (1, 4), (4, 1), (8, 1), (4, 4), (3, 5), (16, 1)])
def test_bsr_round_trip_with_ragged_edges(shape, block):
    w = _weight(shape, 0.7)
    w[0] = 0  # an all-zero row
    b = st.pack_bsr(w, *block)
    assert b.data.shape[1:] == block and b.indices.dtype == np.int32 and b.indptr.dtype == np.int32
    assert b.indptr[-1] == b.nnzb and len(b.indptr) == -(-shape[0] // block[0]) + 1
    np.testing.assert_array_equal(st.unpack_bsr(b), w)
    # every stored block holds a nonzero; no nonzero is outside a stored block
    assert all(np.any(d != 0) for d in b.data)
    assert np.count_nonzero(b.data) == np.count_nonzero(w)


def test_all_zero_weight_packs_to_no_blocks():
    b = st.pack_bsr(np.zeros((5, 7), np.float32), 4, 4)
    assert b.nnzb == 0 and list(b.indptr) == [0, 0, 0]
    np.testing.assert_array_equal(st.unpack_bsr(b), np.zeros((5, 7), np.float32))


def test_block_sparsity_detects_block_structure():
    rng = np.random.default_rng(1)
    mask = rng.random((16, 8)) > 0.9                       # 4x4 blocks over a 64x32 weight
    w = (rng.standard_normal((64, 32)) * np.kron(mask, np.ones((4, 4)))).astype(np.float32)
    a = st.analyse(w)
    assert a.sparsity == pytest.approx(1 - mask.mean(), abs=1e-6)
    assert a.blocks[(4, 4)]["block_sparsity"] == pytest.approx(1 - mask.mean())
    assert a.blocks[(4, 4)]["stored_fraction"] == pytest.approx(mask.mean())
    assert (4, 4) in a.good_blocks()
    # unstructured zeros: big blocks store far more than the nonzeros and are not proposed
    u = st.analyse(_weight((64, 32), 0.9, seed=2))
    assert (4, 4) not in u.good_blocks() and (8, 4) not in u.good_blocks()


@pytest.mark.parametrize("n,m,cols", [(2, 4, 16), (1, 4, 10), (2, 8, 24), (4, 8, 19)])
def test_nm_detection_and_round_trip(n, m, cols):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, cols)).astype(np.float32)
    for row in w:
        for g in range(0, cols, m):
            seg = row[g:g + m]
            keep = rng.choice(len(seg), size=min(n, len(seg)), replace=False)
            drop = np.setdiff1d(np.arange(len(seg)), keep)
            seg[drop] = 0
    found = st.nm_structure(w, ms=(m,))
    assert found is not None and found[1] == m and found[0] <= n
    p = st.pack_nm(w, n, m)
    assert p.values.shape == (6, -(-cols // m), n) and p.offsets.dtype == np.uint8
    assert int(p.offsets.max()) < m
    np.testing.assert_array_equal(st.unpack_nm(p), w)


def test_nm_rejects_dense_groups():
    w = np.ones((3, 8), np.float32)
    assert st.nm_structure(w) is None
    with pytest.raises(ValueError):
        st.pack_nm(w, 2, 4)


def test_sparsity_and_hint_is_not_trusted():
    w = _weight((10, 10), 0.0)
    a = st.analyse(w, hint={"format": "block", "sparsity": 0.9})
    assert a.sparsity == 0.0 and a.good_blocks() == [] and a.nm is None


@pytest.mark.parametrize("shape", [(8, 8), (13, 29), (1, 5), (64, 3)])
@pytest.mark.parametrize("tiles", [(1, 1), (4, 8), (3, 5), (64, 384)])
def test_blocked_csr_round_trip_and_order(shape, tiles):
    w = _weight(shape, 0.7)
    w[0] = 0  # an all-zero row
    b = st.pack_csr_blocked(w, *tiles)
    assert b.cols.dtype == np.int32 and b.ptr.dtype == np.int32
    assert len(b.ptr) == b.row_tiles * b.k_tiles * tiles[0] + 1 and b.ptr[-1] == b.data.size
    assert np.count_nonzero(b.data) == b.data.size == np.count_nonzero(w)
    np.testing.assert_array_equal(st.unpack_csr_blocked(b), w)
    for i in range(len(b.ptr) - 1):     # each segment: one column tile, ascending columns
        cols = b.cols[b.ptr[i]:b.ptr[i + 1]]
        kt = (i // tiles[0]) % b.k_tiles
        assert np.all(cols // tiles[1] == kt) and np.all(np.diff(cols) > 0)
