"""``lsq-reconstruct``: least-squares reconstruction of each consumer's remaining weights.

For every layer whose input channels were pruned (``layers=consumers``, default) or every
linear layer below the pruning (``layers=all``), in topological order and with the
already repaired upstream, solve

    min_W  ||[X', 1] W - Y_dense||^2 + λ ||W - W_now||^2

where X' are the layer's input patches in the *pruned* model and Y_dense its output in the
dense model (at the kept output channels), on calibration data. The ridge term pulls
towards the current weights (λ = damp × mean diag), so with few samples nothing drifts,
and the objective at the solution is at most the error at W_now: the layer's
reconstruction error never goes up, and goes down strictly unless W_now was optimal.
Grouped/depthwise convolutions are solved per group. Statistics are streamed: per layer
only the normal equations (A = X̃ᵀX̃, B = X̃ᵀY, Σ||Y||²) are kept, with at most
``max_rows`` sampled positions per batch.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from graphprune.importance.layers import (
    Linear, conv_patches, features, linear_of, num_positions, rows_of_output)
from graphprune.ir.constants import const_array
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.reconstruction._common import (
    check_batches, check_choice, current_bias, downstream_layers, guarded, kept, pruned_consumers, repair_inputs,
    set_bias, shared, waves)
from graphprune.errors import UsageError

log = logging.getLogger(__name__)

MAX_UNKNOWNS = 4096  # per group: (in-per-group × taps + 1); larger layers are skipped


class _Normal:
    """Normal equations of one layer, per group."""

    def __init__(self, lin: Linear, groups: int, bias: bool):
        self.lin, self.groups, self.bias = lin, groups, bias
        self.A = self.B = None
        self.C = np.zeros(groups)
        self.rows = 0

    def update(self, X: np.ndarray, Y: np.ndarray) -> None:
        """X: (rows, groups, D), Y: (rows, groups, out per group)."""
        if self.bias:
            X = np.concatenate([X, np.ones(X.shape[:2] + (1,), X.dtype)], axis=2)
        A = np.einsum("rgi,rgj->gij", X, X, optimize=True)
        B = np.einsum("rgi,rgo->gio", X, Y, optimize=True)
        if self.A is None:
            self.A, self.B = A, B
        else:
            self.A += A
            self.B += B
        self.C += np.einsum("rgo,rgo->g", Y, Y)
        self.rows += X.shape[0]

    def error(self, W: np.ndarray) -> float:
        """Σ_g ||X W_g - Y_g||² from the normal equations."""
        t = np.einsum("gio,gij,gjo->", W, self.A, W) - 2 * np.einsum("gio,gio->", W, self.B) + self.C.sum()
        return float(max(t, 0.0))


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


def _rows(lin: Linear, x: np.ndarray, groups: int, max_rows: int, rng) -> tuple[np.ndarray, np.ndarray | None]:
    """Input rows (positions, groups, D) — at most `max_rows` sampled positions — and
    which positions were taken (None: all)."""
    if lin.kind == "conv":
        w_shape = const_array(lin.w).shape
        total = num_positions(x.shape, lin.node, w_shape)
        pick = np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows else None
        return conv_patches(x, lin.node, w_shape, groups, pick), pick
    f = features(lin, x)
    pick = np.sort(rng.choice(f.shape[0], max_rows, replace=False)) if f.shape[0] > max_rows else None
    return (f if pick is None else f[pick])[:, None, :], pick


@register_pass
class LsqReconstruct(Pass):
    """Options: layers (consumers|all), damp (ridge, default 1e-3), max_rows (sampled
    positions per batch and layer, default 4096), batches (calibration batches, default
    all), guard (undo if the output error does not drop, default true)."""

    name = "lsq-reconstruct"
    description = "least-squares reconstruction of the pruned layers' weights on calibration data"

    def __init__(self, *, layers: str = "consumers", damp: float = 1e-3, max_rows: int = 4096,
                 batches: int | None = None, guard: bool = True, seed: int = 0):
        super().__init__()
        check_choice(self.name, "layers", layers, ("consumers", "all"))
        check_batches(self.name, batches)
        if damp < 0 or max_rows < 1:
            raise UsageError(f"{self.name}: damp must be >= 0 and max_rows >= 1")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        from graphprune.runtime.calibration import progress
        from graphprune.runtime.ort import Runner

        inp = repair_inputs(ctx, self.name)
        opts = self.resolved_options()
        damp = float(opts.get("damp", 1e-3))
        max_rows = int(opts.get("max_rows", 4096))
        n_batches = opts.get("batches")
        n_batches = int(n_batches) if n_batches not in (None, "") else None
        layers = opts.get("layers", "consumers")
        rng = np.random.default_rng(int(opts.get("seed", 0)))

        def apply(undo):
            lins = pruned_consumers(model, inp.removed) if layers == "consumers" else \
                downstream_layers(model, inp.removed)
            lins = [lin for lin in lins if lin.kind in ("conv", "gemm", "matmul") and not shared(lin.w)]
            per_layer = []
            for wave in waves(model, [lin.node for lin in lins]):
                wl = [linear_of(n) for n in wave]
                setups = []
                for lin in wl:
                    groups = lin.group if lin.kind == "conv" else 1
                    w = const_array(lin.w)
                    d = (w.size // w.shape[0]) if lin.kind == "conv" else w.shape[lin.w_in_axis]
                    bias = lin.kind != "matmul" and (lin.b is None or not shared(lin.b))
                    if d + int(bias) > MAX_UNKNOWNS:
                        log.info("lsq-reconstruct: %s has %d unknowns per output, skipped", lin.name, d)
                        continue
                    setups.append((lin, groups, bias, _Normal(lin, groups, bias)))
                if not setups:
                    continue
                run_p = Runner(model, [lin.x.name for lin, *_ in setups])
                run_d = Runner(inp.dense, [lin.y.name for lin, *_ in setups])
                for feeds in progress(inp.calibration.batches(n_batches), inp.calibration.total(n_batches),
                                      "lsq-reconstruct"):
                    xs, ys = run_p(feeds), run_d(feeds)
                    for lin, groups, _bias, ne in setups:
                        X, pick = _rows(lin, xs[lin.x.name], groups, max_rows, rng)
                        y = ys[lin.y.name]
                        sel = kept(inp.removed, lin.y.name, lin.y_axis, y.shape[lin.y_axis])
                        Y = rows_of_output(lin, np.take(y, sel, axis=lin.y_axis))
                        Y = (Y if pick is None else Y[pick]).reshape(len(X), groups, -1)
                        ne.update(X.astype(np.float64), Y.astype(np.float64))
                for lin, groups, bias, ne in setups:
                    W0 = _current(lin, groups, bias)
                    lam = damp * max(float(np.mean(np.einsum("gii->gi", ne.A))), 1e-12)
                    eye = np.eye(ne.A.shape[1])[None]
                    try:
                        W = np.linalg.solve(ne.A + lam * eye, ne.B + lam * W0)
                    except np.linalg.LinAlgError:
                        log.info("lsq-reconstruct: %s singular, skipped", lin.name)
                        continue
                    e0, e1 = ne.error(W0), ne.error(W)
                    if not e1 < e0:
                        continue
                    _write(model, lin, W, groups, bias, undo)
                    per_layer.append({"layer": lin.name, "rows": ne.rows, "error_before": e0 / max(ne.rows, 1),
                                      "error_after": e1 / max(ne.rows, 1)})
            return {"layers": per_layer}

        return guarded(self.name, model, inp, apply, guard=bool(opts.get("guard", True)), ctx=ctx)
