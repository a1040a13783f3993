"""``bn-reestimate``: re-estimate normalisation statistics on calibration data.

After channels are removed the inputs of later BatchNorms have different statistics. For
every BatchNormalization below the pruning, in topological order with the already
re-estimated upstream, the running mean/variance are recomputed from the pruned model's
activations on calibration data:

* ``match=dense`` (default): the normalised pruned input gets the same per-channel mean
  and spread as the normalised *dense* input on the same data:
  σ' = s'·σ/s, μ' = m' − σ'(m − μ)/σ  (m, s dense empirical; m', s' pruned; μ, σ stored).
  This equals the textbook re-estimation when the calibration data matches the training
  statistics (m = μ, s = σ), and stays right when it does not (e.g. synthetic data).
* ``match=data``: μ' = m', σ'² = s'² (textbook).

Many exported models have BatchNorm folded into the convolutions. With ``folded=true``
(default) the layers that consume pruned channels and are not followed by a
BatchNormalization get the same treatment on their outputs: an affine correction per
output channel (scale clipped to [1/4, 4]) folded into their weights and bias.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_array
from graphprune.passes._infra import Pass, PassContext, register_pass
from graphprune.passes.reconstruction._common import (
    affected_nodes, check_batches, check_choice, current_bias, guarded, kept, pruned_consumers, repair_inputs,
    set_bias, shared, waves)

log = logging.getLogger(__name__)


def _bn_nodes(model: ir.Model, removed: dict) -> list[ir.Node]:
    """BatchNorms whose input changes on the kept channels."""
    dirty = affected_nodes(model, removed)
    out = []
    for node in model.graph:
        x = node.inputs[0] if node.inputs else None
        if node.op_type == "BatchNormalization" and x is not None and x.producer() is not None \
                and id(x.producer()) in dirty and all(
                    v is not None and const_array(v) is not None and not shared(v) for v in node.inputs[1:5]):
            out.append(node)
    return out


def _followed_by_bn(v: ir.Value) -> bool:
    return any(u.node.op_type == "BatchNormalization" for u in v.uses())


@register_pass
class BnReestimate(Pass):
    """Options: match (dense|data), folded (true|false), batches, guard (default true)."""

    name = "bn-reestimate"
    description = "re-estimate BatchNorm statistics (and folded-BN layers' outputs) on calibration data"

    def __init__(self, *, match: str = "dense", folded: bool = True, batches: int | None = None,
                 guard: bool = True):
        super().__init__()
        check_choice(self.name, "match", match, ("dense", "data"))
        check_batches(self.name, batches)

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        from graphprune.runtime.calibration import progress
        from graphprune.runtime.stats import StatsRequest

        inp = repair_inputs(ctx, self.name)
        opts = self.resolved_options()
        match = opts.get("match", "dense")
        folded = bool(opts.get("folded", True))
        n_batches = opts.get("batches")
        n_batches = int(n_batches) if n_batches not in (None, "") else None

        def apply(undo):
            targets = _bn_nodes(model, inp.removed)
            lins = {}
            if folded:
                for lin in pruned_consumers(model, inp.removed):
                    if lin.kind in ("conv", "gemm") and not _followed_by_bn(lin.y) and not shared(lin.w):
                        lins[id(lin.node)] = lin
                        targets.append(lin.node)
            done = []
            for wave in waves(model, targets):
                pr, dr = StatsRequest(), StatsRequest()
                for n in wave:
                    if id(n) in lins:
                        v, ax = lins[id(n)].y.name, lins[id(n)].y_axis
                    else:
                        v, ax = n.inputs[0].name, 1
                    pr.want_channel(v, ax)
                    dr.want_channel(v, ax)
                from graphprune.runtime.ort import Runner

                rp, rd = Runner(model, pr.names), Runner(inp.dense, dr.names)
                for feeds in progress(inp.calibration.batches(n_batches), inp.calibration.total(n_batches),
                                      "bn-reestimate"):
                    a, b = rp(feeds), rd(feeds)
                    for (name, _), st in pr.channel.items():
                        st.update(a[name])
                    for (name, _), st in dr.channel.items():
                        st.update(b[name])
                for n in wave:
                    if id(n) in lins:
                        lin = lins[id(n)]
                        key = (lin.y.name, lin.y_axis)
                        if self._fix_layer(model, lin, pr.channel[key], dr.channel[key], inp, undo):
                            done.append(lin.name)
                    else:
                        key = (n.inputs[0].name, 1)
                        self._fix_bn(n, pr.channel[key], dr.channel[key], inp, match, undo)
                        done.append(n.name)
            return {"nodes": done}

        return guarded(self.name, model, inp, apply, guard=bool(opts.get("guard", True)), ctx=ctx)

    @staticmethod
    def _fix_bn(node, ps, ds, inp, match, undo) -> None:
        eps = float(node.attributes["epsilon"].value) if "epsilon" in node.attributes else 1e-5
        x = node.inputs[0]
        mean_v, var_v = node.inputs[3], node.inputs[4]
        mu = const_array(mean_v).astype(np.float64)
        var = const_array(var_v).astype(np.float64)
        m1, s1 = ps.mean, np.sqrt(ps.var)
        if match == "data":
            new_mu, new_var = m1, ps.var
        else:
            sel = kept(inp.removed, x.name, 1, len(ds.mean))
            m, s = ds.mean[sel], np.sqrt(ds.var[sel])
            sigma = np.sqrt(var + eps)
            ok = s > 1e-12
            sig1 = np.where(ok, s1 * sigma / np.where(ok, s, 1.0), sigma)
            new_mu = m1 - sig1 * (m - mu) / sigma
            new_var = np.maximum(sig1 ** 2 - eps, 0.0)
        undo.set(mean_v, new_mu)
        undo.set(var_v, new_var)

    @staticmethod
    def _fix_layer(model, lin, ps, ds, inp, undo) -> bool:
        sel = kept(inp.removed, lin.y.name, lin.y_axis, len(ds.mean))
        m, s = ds.mean[sel], np.sqrt(ds.var[sel])
        m1, s1 = ps.mean, np.sqrt(ps.var)
        a = np.clip(np.where(s1 > 1e-12, s / np.maximum(s1, 1e-12), 1.0), 0.25, 4.0)
        w = const_array(lin.w).astype(np.float64)
        shape = [1] * w.ndim
        shape[lin.w_out_axis] = -1
        b = current_bias(lin, len(m))
        new_b = a * b + m - a * m1
        if lin.b is not None and shared(lin.b):
            return False
        undo.set(lin.w, w * a.reshape(shape))
        return set_bias(model, lin, new_b, undo)
