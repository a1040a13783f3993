"""Calibration statistics of each layer's input: per-column sums of squares (Wanda's
‖X_j‖) and, for the OBS criterion, the Gram matrix H = XᵀX / rows (the layer's Hessian
of the squared reconstruction error, up to a factor 2).

Layers that read the same tensor the same way (q/k/v projections of one block, gate/up
of one MLP) share one statistic. Batches are streamed; conv inputs are unfolded into
patches with at most ``max_rows`` sampled positions per batch, so memory is one batch of
activations plus the statistics themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.importance.layers import conv_patches, features, num_positions
from graphprune.passes.sparsity.targets import Target


@dataclass
class InputStats:
    sq: np.ndarray | None = None  # [groups, D] sum of squares per (natural) input column
    H: np.ndarray | None = None  # [groups, D, D] sum of outer products
    rows: int = 0

    def update(self, X: np.ndarray, hessian: bool) -> None:
        """X: (rows, groups, D)."""
        X = X.astype(np.float64, copy=False)
        sq = np.einsum("rgd,rgd->gd", X, X)
        self.sq = sq if self.sq is None else self.sq + sq
        if hessian:
            h = np.stack([X[:, g].T @ X[:, g] for g in range(X.shape[1])])
            self.H = h if self.H is None else self.H + h
        self.rows += X.shape[0]

    def hessian(self) -> np.ndarray:
        return self.H / max(self.rows, 1)


def stats_key(t: Target) -> tuple:
    return ("features", t.lin.x.name, t.lin.x_axis) if t.op != "Conv" else ("conv", t.node_name)


def input_rows(t: Target, x: np.ndarray, max_rows: int, rng, mask: np.ndarray | None = None) -> np.ndarray:
    """At most `max_rows` sampled input rows (rows, groups, D), none of them a text batch's
    padded position (`mask`, runtime/positions.py)."""
    if t.op == "Conv":
        w_shape = t.weight().shape
        total = num_positions(x.shape, t.lin.node, w_shape)
        pick = np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows else None
        return conv_patches(x, t.lin.node, w_shape, t.group, pick)
    f = features(t.lin, x, mask)
    if f.shape[0] > max_rows:
        f = f[np.sort(rng.choice(f.shape[0], max_rows, replace=False))]
    return f[:, None, :]


def collect(model: ir.Model, targets: list[Target], calib, *, hessian: bool, max_rows: int = 8192,
            batches: int | None = None, seed: int = 0, desc: str = "sparsity calibration") -> dict[tuple, InputStats]:
    """Stream the calibration data through `model` and return the stats per `stats_key`."""
    from graphprune.runtime.calibration import progress
    from graphprune.runtime.ort import Runner
    from graphprune.runtime.positions import padding_mask

    rng = np.random.default_rng(seed)
    by_key: dict[tuple, Target] = {}
    for t in targets:
        by_key.setdefault(stats_key(t), t)
    stats = {k: InputStats() for k in by_key}
    run = Runner(model, [t.lin.x.name for t in by_key.values()])
    for feeds in progress(calib.batches(batches), calib.total(batches), desc):
        xs = run(feeds)
        mask = padding_mask(feeds)
        for k, t in by_key.items():
            stats[k].update(input_rows(t, xs[t.lin.x.name], max_rows, rng, mask), hessian)
        del xs
    return stats


def row_groups(t: Target, n_out: int) -> np.ndarray:
    """Group of every output row (grouped convs: row o reads group o // (O/g))."""
    return np.arange(n_out) // max(n_out // t.group, 1)


def input_norms(t: Target, st: InputStats, n_out: int) -> np.ndarray:
    """‖X_j‖ for every element of the logical matrix [out, in] (Wanda's activation factor)."""
    norms = np.sqrt(st.sq)[:, t.natural_to_logical()]  # [groups, D] in logical column order
    return norms[row_groups(t, n_out)]


def logical_hessian(t: Target, st: InputStats) -> np.ndarray:
    """H in logical column order, per group: [groups, D, D]."""
    p = t.natural_to_logical()
    return st.hessian()[:, p][:, :, p]
