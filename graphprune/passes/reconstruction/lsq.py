"""``lsq-reconstruct``: least-squares reconstruction of each consumer's remaining weights.

For every layer whose input channels were pruned (``layers=consumers``, default) or every
linear layer below the pruning (``layers=all``), in topological order and with the
already repaired upstream, solve

    min_W  ||[X', 1] W - Y_dense||^2 + λ ||W - W_now||^2

where X' are the layer's input patches in the *pruned* model and Y_dense its output in the
dense model (at the kept output channels; a MatMul's with the bias of the Add after it,
which is its intercept: `repair_layer`), on calibration data. The ridge term pulls
towards the current weights (λ = damp × mean diag), so with few samples nothing drifts,
and the objective at the solution is at most the error at W_now: the layer's
reconstruction error never goes up, and goes down strictly unless W_now was optimal.

The ridge strength is chosen per layer on held-out rows (``damp=auto``, the default): a
quarter of the calibration batches (or of the sampled rows, with fewer than four batches)
is kept out of the fit, each strength of DAMP_GRID is fitted on the rest and scored on
them, and the best is refitted on all rows. A least-squares fit that only matches the
calibration samples (few or uniform samples for the layer's size) is what makes a
repaired model fail on inputs of another style; choosing the strength on rows the fit did
not see is the cheap guard against it, and a layer whose held-out error stays far above
its fit error is reported (``overfit``), so the verbs can warn that the calibration set is
too small or too uniform for the layers being fitted. The current weights are one of the
candidates (an infinite ridge): a layer no fit improves on held-out rows is left alone.
Grouped/depthwise convolutions are solved per group. Statistics are streamed: per layer
only the normal equations (A = X̃ᵀX̃, B = X̃ᵀY, Σ||Y||²) are kept, with at most
``max_rows`` sampled positions per batch; a text batch's padded positions are not rows
(runtime/positions.py).
"""
from __future__ import annotations

import logging
import zlib

import numpy as np
import onnx_ir as ir

from graphprune.importance.layers import (
    Linear, conv_patches, features, num_positions, rows_of_output)
from graphprune.ir.constants import const_array
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.reconstruction._common import (
    check_batches, check_choice, current_bias, downstream_layers, guarded, kept, pruned_consumers, repair_inputs,
    repair_layer, set_bias, shared, waves, writable_bias)
from graphprune.errors import UsageError

log = logging.getLogger(__name__)

MAX_UNKNOWNS = 4096  # per group: (in-per-group × taps + 1); larger layers are skipped
DAMP_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried with damp=auto (× mean diag of XᵀX)
OVERFIT = 2.0  # held-out error above this × the fit error (at the chosen strength): flagged


class _Equations:
    """Σ XᵀX, Σ XᵀY, Σ ||Y||² of some rows of one layer, per group."""

    def __init__(self, groups: int):
        self.A = self.B = None
        self.C = np.zeros(groups)
        self.rows = 0

    def update(self, X: np.ndarray, Y: np.ndarray) -> None:
        if not len(X):
            return
        A = np.einsum("rgi,rgj->gij", X, X, optimize=True)
        B = np.einsum("rgi,rgo->gio", X, Y, optimize=True)
        if self.A is None:
            self.A, self.B = A, B
        else:
            self.A += A
            self.B += B
        self.C += np.einsum("rgo,rgo->g", Y, Y)
        self.rows += X.shape[0]

    def __add__(self, other: "_Equations") -> "_Equations":
        if other.A is None:
            return self
        if self.A is None:
            return other
        out = _Equations(len(self.C))
        out.A, out.B, out.C, out.rows = self.A + other.A, self.B + other.B, self.C + other.C, self.rows + other.rows
        return out

    def error(self, W: np.ndarray) -> float:
        """Σ_g ||X W_g - Y_g||² from the normal equations."""
        t = np.einsum("gio,gij,gjo->", W, self.A, W) - 2 * np.einsum("gio,gio->", W, self.B) + self.C.sum()
        return float(max(t, 0.0))

    def solve(self, W0: np.ndarray, damp: float) -> np.ndarray:
        lam = damp * max(float(np.mean(np.einsum("gii->gi", self.A))), 1e-12)
        return np.linalg.solve(self.A + lam * np.eye(self.A.shape[1])[None], self.B + lam * W0)


class _Normal:
    """Normal equations of one layer, per group: rows fitted on, and rows held out to
    choose the ridge strength on."""

    def __init__(self, lin: Linear, groups: int, bias: bool, dense_bias: np.ndarray | None = None):
        self.lin, self.groups, self.bias = lin, groups, bias
        # a MatMul's output excludes the bias its Add adds: the dense layer's bias joins the target
        self.dense_bias = dense_bias
        self.fit, self.held = _Equations(groups), _Equations(groups)

    @property
    def rows(self) -> int:
        return self.fit.rows + self.held.rows

    def update(self, X: np.ndarray, Y: np.ndarray, held: np.ndarray | bool) -> None:
        """X: (rows, groups, D), Y: (rows, groups, out per group); `held`: which rows are
        held out (a mask, or one flag for the whole batch)."""
        if self.bias:
            X = np.concatenate([X, np.ones(X.shape[:2] + (1,), X.dtype)], axis=2)
        mask = np.broadcast_to(np.asarray(held, bool), (X.shape[0],))
        self.fit.update(X[~mask], Y[~mask])
        self.held.update(X[mask], Y[mask])

    def error(self, W: np.ndarray) -> float:
        return (self.fit + self.held).error(W)

    def solve(self, W0: np.ndarray, damp: float | str) -> tuple[np.ndarray, dict]:
        """The ridge solution on all rows, its strength fixed or (auto) chosen on the held-out rows."""
        everything = self.fit + self.held
        if damp != "auto":
            return everything.solve(W0, float(damp)), {"damp": float(damp)}
        if self.held.A is None or self.fit.A is None:  # nothing to hold out: the most cautious strength
            return everything.solve(W0, DAMP_GRID[-1]), {"damp": DAMP_GRID[-1], "held_out_rows": 0}
        # the current weights are a candidate too (an infinite ridge): when no fit does better on
        # the held-out rows than leaving the layer alone, it is left alone
        trials = [(self.held.error(W0), float("inf"), self.fit.error(W0))]
        for d in DAMP_GRID:
            W = self.fit.solve(W0, d)
            trials.append((self.held.error(W), d, self.fit.error(W)))
        held_err, best, fit_err = min(trials, key=lambda t: t[0])
        info = {"damp": best, "held_out_rows": self.held.rows,
                "overfit": bool(held_err / max(self.held.rows, 1) > OVERFIT * fit_err / max(self.fit.rows, 1))}
        if best == float("inf"):
            info.update(damp=None, kept=True)
            return W0, info
        return everything.solve(W0, best), info


def _current(lin: Linear, groups: int, bias: bool) -> np.ndarray:
    """Current weights as (groups, D(+1), out per group), matching the patch layout."""
    w = const_array(lin.w).astype(np.float64)
    if lin.kind == "conv":
        m = w.shape[0]
        og = m // groups
        W = w.reshape(groups, og, -1).transpose(0, 2, 1)  # (G, ig*taps, og)
    elif lin.kind == "gemm":
        W = (w.T if lin.w_in_axis == 1 else w)[None]  # (1, K, N)
    else:
        W = w[None]
    if bias:
        b = current_bias(lin, W.shape[0] * W.shape[2]).reshape(groups, 1, -1)
        W = np.concatenate([W, b], axis=1)
    return W


def _write(model: ir.Model, lin: Linear, W: np.ndarray, groups: int, bias: bool, undo) -> None:
    w0 = const_array(lin.w)
    if bias:
        b, W = W[:, -1, :].reshape(-1), W[:, :-1, :]
    if lin.kind == "conv":
        new = W.transpose(0, 2, 1).reshape(w0.shape)
    elif lin.kind == "gemm":
        new = W[0].T if lin.w_in_axis == 1 else W[0]
    else:
        new = W[0]
    undo.set(lin.w, new)
    if bias:
        set_bias(model, lin, b, undo)


DENSE_ROWS = "lsq-reconstruct dense rows"


class DenseRows:
    """Rows of the dense model's layer outputs (sampled positions, all channels) per
    calibration batch, kept between runs that share the dense model and the batches.

    The candidate search sets one on the calibration it fits every candidate on (each
    candidate is a copy of the same input model, pruned and repaired on the same batches),
    in ``calibration.cache[DENSE_ROWS]``; then only the first candidate runs the dense model for a
    layer, the others read its rows. Rows are sampled with a generator seeded by (seed,
    batch, layer), so a layer's sample is the same in every run. Up to `limit` bytes are
    kept; beyond that, rows are recomputed as without a cache."""

    def __init__(self, limit: int = 1 << 30):
        self.rows: dict[tuple, tuple[np.ndarray | None, np.ndarray]] = {}
        self.nbytes = 0
        self.limit = limit
        self.hits = 0

    def get(self, key: tuple, pick: np.ndarray | None) -> np.ndarray | None:
        got = self.rows.get(key)
        if got is None:
            return None
        p, rows = got
        if (p is None) != (pick is None) or (p is not None and not np.array_equal(p, pick)):
            return None  # another sample (another input shape): recompute
        self.hits += 1
        return rows

    def put(self, key: tuple, pick: np.ndarray | None, rows: np.ndarray) -> None:
        if key not in self.rows and self.nbytes + rows.nbytes <= self.limit:
            self.rows[key] = (pick, rows)
            self.nbytes += rows.nbytes


def _layer_rng(seed: int, batch: int, name: str):
    """The generator that samples a layer's rows on one batch: the same in every run."""
    return np.random.default_rng([seed, batch, zlib.crc32(name.encode())])


def _rows(lin: Linear, x: np.ndarray, groups: int, max_rows: int, rng,
          mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Input rows (positions, groups, D) — at most `max_rows` sampled positions, none of
    them padding (`mask`) — and which positions were taken (None: all)."""
    if lin.kind == "conv":
        w_shape = const_array(lin.w).shape
        total = num_positions(x.shape, lin.node, w_shape)
        pick = np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows else None
        return conv_patches(x, lin.node, w_shape, groups, pick), pick
    f = features(lin, x, mask)
    pick = np.sort(rng.choice(f.shape[0], max_rows, replace=False)) if f.shape[0] > max_rows else None
    return (f if pick is None else f[pick])[:, None, :], pick


def _dense_add_bias(lin: Linear, dense_nodes: dict) -> np.ndarray:
    """The bias the dense model's Add gives this MatMul layer (all its output channels)."""
    dlin = repair_layer(dense_nodes.get(lin.node.name))
    if dlin is None or dlin.b is None:
        raise RuntimeError(f"lsq-reconstruct: {lin.name} has a bias Add that the dense model has not")
    return const_array(dlin.b).astype(np.float64)


def _solve_and_write(model: ir.Model, ne: _Normal, damp, undo) -> dict | None:
    """Solve one layer's ridge problem and write it when it lowers the layer's error on
    all calibration rows; its report entry (None: left as it was)."""
    lin, groups, bias = ne.lin, ne.groups, ne.bias
    W0 = _current(lin, groups, bias)
    try:
        W, info = ne.solve(W0, damp)
    except np.linalg.LinAlgError:
        log.info("lsq-reconstruct: %s singular, skipped", lin.name)
        return None
    if info.get("kept"):
        return {"layer": lin.name, "kept": True}
    e0, e1 = ne.error(W0), ne.error(W)
    if not e1 < e0:
        return None
    _write(model, lin, W, groups, bias, undo)
    rows = max(ne.rows, 1)
    return {"layer": lin.name, "rows": ne.rows, "unknowns": int(W0.shape[1]), "error_before": e0 / rows,
            "error_after": e1 / rows, **info}


def _report(entries: list[dict]) -> dict:
    """The pass's result from its per-layer entries; says which layers were left alone and
    which fit the calibration rows much better than the held-out ones."""
    left = [e["layer"] for e in entries if e.get("kept")]
    per_layer = [e for e in entries if not e.get("kept")]
    if left:
        log.info("lsq-reconstruct: %d layers left as they were (%s%s): no refit did better than their current "
                 "weights on held-out calibration rows", len(left), ", ".join(left[:3]), ", ..." if len(left) > 3 else "")
    over = [e for e in per_layer if e.get("overfit")]
    overfit = [e["layer"] for e in over]
    if overfit:
        # the scarcest layer: calibration rows (positions; tokens for text) per unknown of one output
        tight = min(over, key=lambda e: e["rows"] / max(e["unknowns"], 1))
        log.warning("lsq-reconstruct: %d of %d layers fit the calibration rows much better than held-out "
                    "rows (%s%s): the calibration set is small or uniform for layers this size (%s: %d rows "
                    "for %d unknowns per output); more varied --calib data repairs better", len(overfit),
                    len(per_layer), ", ".join(overfit[:3]), ", ..." if len(overfit) > 3 else "", tight["layer"],
                    tight["rows"], tight["unknowns"])
    return {"layers": per_layer, "overfit_layers": len(overfit), "kept_layers": len(left)}


@register_pass
class LsqReconstruct(Pass):
    """Options: layers (consumers|all), damp (ridge strength, or auto (default): chosen
    per layer on held-out calibration rows), max_rows (sampled positions per batch and
    layer, default 4096), batches (calibration batches, default all), guard (undo if the
    output error does not drop, default true)."""

    name = "lsq-reconstruct"
    description = "least-squares reconstruction of the pruned layers' weights on calibration data"

    def __init__(self, *, layers: str = "consumers", damp: float | str = "auto", max_rows: int = 4096,
                 batches: int | None = None, guard: bool = True, seed: int = 0):
        super().__init__()
        check_choice(self.name, "layers", layers, ("consumers", "all"))
        check_batches(self.name, batches)
        if (damp != "auto" and not (isinstance(damp, (int, float)) and damp >= 0)) or max_rows < 1:
            raise UsageError(f"{self.name}: damp must be auto or a number >= 0, and max_rows >= 1")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        from graphprune.runtime.calibration import progress
        from graphprune.runtime.ort import Runner
        from graphprune.runtime.positions import padding_mask

        inp = repair_inputs(ctx, self.name)
        opts = self.resolved_options()
        damp = opts.get("damp", "auto")
        damp = damp if damp == "auto" else float(damp)
        max_rows = int(opts.get("max_rows", 4096))
        n_batches = opts.get("batches")
        n_batches = int(n_batches) if n_batches not in (None, "") else None
        layers = opts.get("layers", "consumers")
        seed = int(opts.get("seed", 0))
        cache = getattr(inp.calibration, "cache", {}).get(DENSE_ROWS)  # set by the candidate search
        dense_nodes = {n.name: n for n in inp.dense.graph}

        def apply(undo):
            lins = pruned_consumers(model, inp.removed) if layers == "consumers" else \
                downstream_layers(model, inp.removed)
            lins = [lin for lin in lins if lin.kind in ("conv", "gemm", "matmul") and not shared(lin.w)]
            per_layer = []
            for wave in waves(model, [lin.node for lin in lins]):
                wl = [repair_layer(n) for n in wave]
                setups = []
                for lin in wl:
                    groups = lin.group if lin.kind == "conv" else 1
                    w = const_array(lin.w)
                    d = (w.size // w.shape[0]) if lin.kind == "conv" else w.shape[lin.w_in_axis]
                    bias = writable_bias(lin)  # an intercept: the op's bias input, or the Add after a MatMul
                    if d + int(bias) > MAX_UNKNOWNS:
                        log.info("lsq-reconstruct: %s has %d unknowns per output, skipped", lin.name, d)
                        continue
                    dense_bias = _dense_add_bias(lin, dense_nodes) if lin.kind == "matmul" and bias else None
                    setups.append((lin, groups, bias, _Normal(lin, groups, bias, dense_bias)))
                if not setups:
                    continue
                run_p = Runner(model, [lin.x.name for lin, *_ in setups])
                run_d = None  # the dense model runs only for rows the cache does not have
                total = inp.calibration.total(n_batches)
                by_batch = total is not None and total >= 4  # hold out whole batches (other samples)
                for k, feeds in enumerate(progress(inp.calibration.batches(n_batches), total, "lsq-reconstruct")):
                    xs = run_p(feeds)
                    mask = padding_mask(feeds)
                    todo = []
                    for lin, groups, _bias, ne in setups:
                        lrng = _layer_rng(seed, k, lin.y.name)
                        X, pick = _rows(lin, xs[lin.x.name], groups, max_rows, lrng, mask)
                        key = (lin.y.name, k, max_rows, seed)
                        rows = cache.get(key, pick) if cache is not None else None
                        todo.append((lin, groups, ne, X, pick, key, rows, lrng))
                    missing = [t[0].y.name for t in todo if t[6] is None]
                    if missing:
                        run_d = run_d or Runner(inp.dense, [lin.y.name for lin, *_ in setups])
                        ys = run_d(feeds, missing)
                    for lin, groups, ne, X, pick, key, rows, lrng in todo:
                        if rows is None:
                            rows = rows_of_output(lin, ys[lin.y.name], mask)
                            rows = rows if pick is None else rows[pick]
                            if cache is not None:
                                cache.put(key, pick, rows)
                        if ne.dense_bias is not None:
                            rows = rows + ne.dense_bias
                        sel = kept(inp.removed, lin.y.name, lin.y_axis, rows.shape[1])
                        Y = rows[:, sel].reshape(len(X), groups, -1)
                        held = (k % 4 == 3) if by_batch else lrng.random(len(X)) < 0.25
                        ne.update(X.astype(np.float64), Y.astype(np.float64), held)
                per_layer += [e for e in (_solve_and_write(model, ne, damp, undo) for *_, ne in setups)
                              if e is not None]
            return _report(per_layer)

        return guarded(self.name, model, inp, apply, guard=bool(opts.get("guard", True)), ctx=ctx)
