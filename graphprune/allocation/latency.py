"""Latency targets, NetAdapt-style: a per-layer latency table measured with ONNX Runtime on
this machine, then the real pruned model measured to close the loop.

* Table: every weighted op (`ir.layers`: Conv, ConvTranspose, Gemm, MatMul) is rebuilt as
  a one-node model at the concrete shapes it runs at, with its input/output channels
  scaled to a grid of kept fractions (1, .75, .5, .25), and timed. A layer's latency at
  any width is interpolated bilinearly on that grid (proportionally below the smallest
  fraction). Identical layers are timed once.
* Everything else (activations, norms, adds, pooling, memory traffic) is the rest: the
  whole model's measured latency minus the layers' dense latencies, scaled with the
  number of activation elements that remain.
* Loop: the allocation meets the *predicted* ratio; the pruned model is then built and
  measured side by side with the dense one, and the predicted target is corrected by the
  measured/asked ratio (a few rounds), as NetAdapt measures each proposal.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import onnx_ir as ir

from graphprune.allocation.cost import CostModel
from graphprune.analysis.dependency.context import Slot
from graphprune.analysis.dependency.graph import DependencyGraph
from graphprune.ir.constants import const_array, is_constant
from graphprune.ir.layers import layer_of

log = logging.getLogger(__name__)

GRID = (1.0, 0.75, 0.5, 0.25)


def time_session(sess, feeds: dict, *, min_repeats: int = 5, max_repeats: int = 50, budget_s: float = 0.3) -> float:
    """Median wall time in ms of sess.run on feeds (after one warm-up run)."""
    sess.run(None, feeds)
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return float(np.median(times) * 1000.0)


def _session(proto_bytes: bytes, threads: int):
    from graphprune.runtime.ort import session

    return session(proto_bytes, threads=threads)


def _attrs(node: ir.Node) -> dict:
    out = {}
    for k, a in node.attributes.items():
        out[k] = a.value if not isinstance(a.value, (list, tuple)) else list(a.value)
    return out


def _one_node_model(op: str, attrs: dict, x_shape, w_shape, has_bias: bool, bias_len: int) -> tuple[bytes, dict]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32) * 0.1, "w")]
    inputs = ["x", "w"]
    if has_bias:
        inits.append(numpy_helper.from_array(np.zeros(bias_len, np.float32), "b"))
        inputs.append("b")
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    node = helper.make_node(op, inputs, ["y"], **attrs)
    g = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [onnx.ValueInfoProto(name="y")], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    return m.SerializeToString(), feeds


class LayerTable:
    """Measured latency of one layer on the (in, out) kept-fraction grid."""

    def __init__(self, node: ir.Node, shapes: dict, threads: int, cache: dict):
        self.node = node
        op = node.op_type
        layer = layer_of(node)
        x_shape = list(shapes[layer.x.name])
        w_shape = list(const_array(layer.w).shape)
        attrs = _attrs(node)
        self.axes = layer.op.axes(attrs, len(x_shape), len(w_shape))  # at the concrete ranks
        has_bias = layer.b is not None
        self.depthwise = self.axes.depthwise(w_shape)
        in_grid = (1.0,) if self.depthwise else GRID
        self.in_grid = np.array(sorted(in_grid))
        self.out_grid = np.array(sorted(GRID))
        self.table = np.zeros((len(self.in_grid), len(self.out_grid)))
        for i, fi in enumerate(self.in_grid):
            for j, fo in enumerate(self.out_grid):
                key = (op, tuple(x_shape), tuple(w_shape), repr(sorted(attrs.items())), has_bias, fi, fo, threads)
                if key not in cache:
                    xs, ws, a, blen = self._scaled(x_shape, w_shape, attrs, fi, fo)
                    proto, feeds = _one_node_model(op, a, xs, ws, has_bias, blen)
                    cache[key] = time_session(_session(proto, threads), feeds)
                self.table[i, j] = cache[key]

    def _scaled(self, x_shape, w_shape, attrs, fi, fo):
        """(input shape, weight shape, attributes, bias length) of the layer with fi of its
        input and fo of its output channels (per group); a depthwise conv scales its groups."""
        def sc(n, f):
            return max(1, int(round(n * f)))

        ax = self.axes
        xs, ws, a = list(x_shape), list(w_shape), dict(attrs)
        if self.depthwise:
            mult = w_shape[ax.w_out] // ax.group
            g2 = sc(ax.group, fo)
            xs[ax.x], ws[ax.w_out], a["group"] = g2, g2 * mult, g2
            return xs, ws, a, ws[ax.w_out]
        ig2, og2 = sc(ax.in_per_group_size(w_shape), fi), sc(ax.out_per_group_size(w_shape), fo)
        xs[ax.x] = ig2 * ax.group
        ws[ax.w_in] = ig2 if ax.in_per_group else ig2 * ax.group
        ws[ax.w_out] = og2 if ax.out_per_group else og2 * ax.group
        return xs, ws, a, og2 * ax.group

    def at(self, fi: float, fo: float) -> float:
        def interp1(grid, vals, f):
            lo = grid[0]
            if f < lo:
                return float(np.interp(lo, grid, vals)) * f / lo
            return float(np.interp(min(f, 1.0), grid, vals))

        if len(self.in_grid) == 1:
            return interp1(self.out_grid, self.table[0], fo)
        col = np.array([interp1(self.out_grid, self.table[i], fo) for i in range(len(self.in_grid))])
        return interp1(self.in_grid, col, fi)


class LatencyModel:
    """Predicted latency (ms) of a selection: table layers + scaled rest."""

    def __init__(self, model: ir.Model, dg: DependencyGraph, shapes: dict, feeds: dict, threads: int = 1):
        from graphprune.runtime.ort import session

        t0 = time.perf_counter()
        self.threads = threads
        cache: dict = {}
        self.layers: list[LayerTable] = []
        terms = []
        for node in model.graph:
            layer = layer_of(node)
            if layer is None or layer.w is None or not is_constant(layer.w) or layer.x is None \
                    or layer.x.name not in shapes:
                continue
            if layer.op.matrix_problem(_attrs(node), const_array(layer.w).ndim):
                continue
            try:
                lt = LayerTable(node, shapes, threads, cache)
            except Exception as exc:  # a layer ORT cannot time alone: its cost joins the rest
                log.debug("latency table: %s not timed (%s)", node.name, exc)
                continue
            self.layers.append(lt)
            terms.append((node.name, 1.0, self._slots(node)))
        self.frac = CostModel(dg, terms)
        self.dense_layers = float(sum(lt.table[-1, -1] for lt in self.layers))
        self.dense_total = time_session(session(model, threads=threads), feeds, min_repeats=10, budget_s=1.0)
        self.rest = max(self.dense_total - self.dense_layers, 0.05 * self.dense_total)
        # activation elements outside the timed layers, for scaling the rest
        act_terms = []
        timed = {id(lt.node) for lt in self.layers}
        for node in model.graph:
            if id(node) in timed:
                continue
            for o in node.outputs:
                if o is not None and o.name in shapes:
                    act_terms.append((o.name, float(np.prod(shapes[o.name])),
                                      [Slot(o.name, i) for i in range(len(shapes[o.name]))]))
        self.act = CostModel(dg, act_terms) if act_terms else None
        self.dense = self.predict({})
        self.build_seconds = time.perf_counter() - t0
        log.info("latency table: %d layers timed (%d distinct measurements) in %.1fs; dense %.3f ms "
                 "(layers %.3f, rest %.3f)", len(self.layers), len(cache), self.build_seconds, self.dense_total,
                 self.dense_layers, self.rest)

    @staticmethod
    def _slots(node: ir.Node) -> list[Slot]:
        """(input channels, output channels): the order `predict` reads them in."""
        layer = layer_of(node)
        return [Slot(layer.x.name, layer.axes.x), Slot(layer.y.name, layer.axes.y)]

    def predict(self, selection: dict[int, list[int]]) -> float:
        f = self.frac.fractions(selection)
        total = 0.0
        for i, lt in enumerate(self.layers):
            fi, fo = f[self.frac.idx[i, 0]], f[self.frac.idx[i, 1]]
            total += lt.at(fi, fo)
        rest = self.rest * (self.act.ratio(selection) if self.act is not None else 1.0)
        return total + rest

    def ratio(self, selection: dict[int, list[int]]) -> float:
        return self.predict(selection) / self.dense if self.dense > 0 else 1.0


def measured_ratio(dense_proto: bytes, pruned_proto: bytes, feeds: dict, threads: int = 1, rounds: int = 5) -> \
        tuple[float, float, float]:
    """(pruned/dense, dense ms, pruned ms): interleaved rounds on this machine, medians."""
    a = _session(dense_proto, threads)
    b = _session(pruned_proto, threads)
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(time_session(a, feeds, min_repeats=5, budget_s=0.3))
        tb.append(time_session(b, feeds, min_repeats=5, budget_s=0.3))
    da, db = float(np.median(ta)), float(np.median(tb))
    return db / da, da, db
