"""``bias-compensate``: fold the expected contribution of removed channels into the bias.

A layer that loses input channels R loses, on average, Σ_{c∈R} W[:, c] · E[x_c] of its
output. With E over the *dense* model's input patches on calibration data (so zero
padding at borders is accounted for exactly), that amount is added to the bias of the
kept output channels (a bias input is created when the layer has none; a MatMul's bias is
the constant of the Add after it, `repair_layer`, and a MatMul without one is skipped).
The weights removed are read from the dense model.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from graphprune.importance.layers import Linear, conv_patches, features, linear_of, num_positions
from graphprune.ir.constants import const_array
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.reconstruction._common import (
    check_batches, current_bias, guarded, kept, pruned_consumers, repair_inputs, set_bias, writable_bias)
from graphprune.errors import UsageError

log = logging.getLogger(__name__)


class _MeanPatch:
    def __init__(self):
        self.sum = None
        self.n = 0

    def update(self, rows: np.ndarray) -> None:
        s = rows.sum(0, dtype=np.float64)
        self.sum = s if self.sum is None else self.sum + s
        self.n += rows.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)


def expected_loss(dense_lin: Linear, mean_patch: np.ndarray, removed_in: np.ndarray) -> np.ndarray:
    """Σ over removed input channels of W[m, c, taps] · E[patch(c, taps)], for every dense
    output m (grouped convs: only the channels of m's group)."""
    m = dense_lin.in_channel_matrix().astype(np.float64)  # (M, in per group, taps)
    out, ig, taps = m.shape
    mp = mean_patch.reshape(-1, taps)  # (C, taps)
    groups = dense_lin.group if dense_lin.kind == "conv" else 1
    og = out // groups
    delta = np.zeros(out)
    for c in np.asarray(removed_in, dtype=np.int64):
        g = c // ig
        delta[g * og:(g + 1) * og] += m[g * og:(g + 1) * og, c % ig, :] @ mp[c]
    return delta


@register_pass
class BiasCompensate(Pass):
    """Options: batches (calibration batches, default all), max_rows (conv positions
    sampled per batch for the mean, default 16384), guard (default true)."""

    name = "bias-compensate"
    description = "fold the expected contribution of removed input channels into each consumer's bias"

    def __init__(self, *, batches: int | None = None, max_rows: int = 16384, guard: bool = True, seed: int = 0):
        super().__init__()
        check_batches(self.name, batches)
        if max_rows < 1:
            raise UsageError(f"{self.name}: max_rows must be >= 1, got {max_rows}")

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        from graphprune.runtime.calibration import progress
        from graphprune.runtime.ort import Runner
        from graphprune.runtime.positions import padding_mask

        inp = repair_inputs(ctx, self.name)
        n_batches = self.options.get("batches")
        n_batches = int(n_batches) if n_batches not in (None, "") else None
        dense_nodes = {n.name: n for n in inp.dense.graph}
        max_rows = int(self.options.get("max_rows", 16384))  # sampled conv positions per batch
        rng = np.random.default_rng(int(self.options.get("seed", 0)))

        def apply(undo):
            todo = []
            for lin in pruned_consumers(model, inp.removed):
                if lin.kind == "convtranspose" or not writable_bias(lin):
                    continue
                dn = dense_nodes.get(lin.node.name)
                dlin = linear_of(dn) if dn is not None else None
                if dlin is None:
                    continue
                todo.append((lin, dlin, _MeanPatch()))
            if not todo:
                return {"layers": []}
            run = Runner(inp.dense, [d.x.name for _, d, _ in todo])
            for feeds in progress(inp.calibration.batches(n_batches), inp.calibration.total(n_batches),
                                  "bias-compensate"):
                xs = run(feeds)
                mask = padding_mask(feeds)  # a text batch's padded positions: not in the means
                for _, d, acc in todo:
                    x = xs[d.x.name]
                    if d.kind == "conv":
                        w_shape = const_array(d.w).shape
                        total = num_positions(x.shape, d.node, w_shape)
                        pick = np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows else None
                        rows = conv_patches(x, d.node, w_shape, 1, pick)[:, 0, :]
                    else:
                        rows = features(d, x, mask)
                    acc.update(rows)
            done = []
            for lin, d, acc in todo:
                removed_in = inp.removed[(lin.w.name, lin.w_in_axis)]
                delta = expected_loss(d, acc.mean, removed_in)
                sel = kept(inp.removed, lin.y.name, lin.y_axis, len(delta))
                new_b = current_bias(lin, len(sel)) + delta[sel]
                if set_bias(model, lin, new_b, undo):
                    done.append({"layer": lin.name, "max_shift": float(np.abs(delta[sel]).max(initial=0.0))})
            return {"layers": done}

        return guarded(self.name, model, inp, apply, guard=bool(self.options.get("guard", True)), ctx=ctx)
