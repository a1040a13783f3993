"""One-shot OBS pruning with weight update (the SparseGPT algorithm, written from the
paper: Frantar & Alistarh 2023, Algorithm 1).

For a layer y = W x with calibration Hessian H = E[x xᵀ], columns are pruned left to
right; zeroing w_ij is compensated on the not-yet-processed columns of row i with the
inverse-Hessian row of j, which is the optimal (OBS) update for the squared output
error. The inverse is taken once as the upper Cholesky factor of (H + λI)⁻¹, λ =
``damp`` × mean(diag H), which gives every sequential inverse in one matrix. Columns
are handled in lazy blocks of ~``blocksize``: updates inside a block are applied at
once per column, those to the right in one matrix product per block.

The mask is chosen inside each block from the OBS saliency w² / [H⁻¹]_jj² of the
*updated* weights: the lowest fraction for unstructured and block formats (the `select`
callback chooses at the block start), and per group of M columns for N:M (chosen when
the loop reaches the group, as in the paper).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def inverse_cholesky(H: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(upper Cholesky factor of (H + λI)⁻¹, dead columns). Columns that never saw a
    nonzero input get H_jj = 1 (their weights are irrelevant to the output)."""
    from scipy.linalg import cho_solve  # here, not at import: scipy.linalg is a fifth of `import graphprune.api`

    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    lam = damp * float(np.mean(np.diag(H)))
    idx = np.arange(len(H))
    for k in range(8):  # more damping if the matrix is numerically indefinite
        Hd = H.copy()
        Hd[idx, idx] += lam * (10 ** k)
        try:
            Hinv = cho_solve((np.linalg.cholesky(Hd), True), np.eye(len(H)))
            U = np.linalg.cholesky((Hinv + Hinv.T) / 2).T
            return U, dead
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Hessian is not positive definite even with strong damping")


def column_blocks(units: list[tuple[int, int]], blocksize: int) -> list[tuple[int, int]]:
    """Merge consecutive column units (N:M groups / block columns, never to be split)
    into lazy blocks of at most ~blocksize columns."""
    out: list[tuple[int, int]] = []
    s = e = units[0][0] if units else 0
    for a, b in units:
        if e - s > 0 and b - s > blocksize:
            out.append((s, e))
            s = a
        e = b
    if e > s:
        out.append((s, e))
    return out


def sparsegpt(W: np.ndarray, H: np.ndarray, blocks: list[tuple[int, int]], *,
              select: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
              nm: tuple[int, int] | None = None, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Prune rows of W [out, in] against H [in, in]. Exactly one of `select`
    (scores of a block, its column range → keep mask) and `nm` is given. Returns
    (updated weights with exact zeros, keep mask)."""
    W = np.array(W, dtype=np.float64)
    U, dead = inverse_cholesky(H, damp)
    W[:, dead] = 0.0
    keep = np.ones(W.shape, bool)
    for s, e in blocks:
        W1 = W[:, s:e].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        U1 = U[s:e, s:e]
        d = np.diag(U1)
        if select is not None:
            k1 = select(W1 ** 2 / d[None, :] ** 2, s, e)
        else:
            k1 = np.ones(W1.shape, bool)
        for i in range(e - s):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sal = W1[:, i:i + m] ** 2 / d[None, i:i + m] ** 2
                drop = np.argsort(sal, axis=1, kind="stable")[:, : m - n]
                g = np.ones(sal.shape, bool)
                np.put_along_axis(g, drop, False, axis=1)
                k1[:, i:i + m] = g
            w = W1[:, i]
            q = np.where(k1[:, i], w, 0.0)
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, s:e] = Q1
        keep[:, s:e] = k1
        W[:, e:] -= Err1 @ U[s:e, e:]
    W[~keep] = 0.0
    return W, keep
