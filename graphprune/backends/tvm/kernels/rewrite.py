"""Relax rewriter: replace linear / conv layers with constant sparse weights by generated
kernels, each chosen by measurement against the dense layer on the target.

Matched (in ``main``'s dataflow blocks, static shapes, float32):

* ``matmul(x, W)`` with W a constant [K, N] (ONNX MatMul) or ``matmul(x,
  permute_dims(C))`` with C a constant [N, K] (ONNX Gemm transB=1, the importer's form),
  x of any rank >= 2 (flattened to [M, K] around the kernel, reshapes are views);
* ``conv2d(x, W)`` (NCHW, constant W) when ``kernels.conv.conv_candidates`` exists;
* a following ``add`` of a constant bias (single use) and then ``nn.relu`` (single use)
  are fused into the kernel. Weight transposes are done at compile time by the packing.

For each layer with at least ``min_sparsity`` exact zeros the generators give candidates;
``measure(kind, layer, module)`` returns milliseconds for a one-layer module (kind
"dense" or a candidate name), and the fastest candidate replaces the layer only if it
beats dense. With ``measure=None`` (a cross target and no device) a documented heuristic
decides: see :func:`heuristic_choice`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from . import structure

# With no device to measure on: sparse wins from these sparsities (TVM_NOTES / benchmark:
# 4x4 / 8x1 blocks beat ORT's dense from ~50%, CSR from ~70%; tuned TVM dense is close
# to ORT on the same layer).
HEURISTIC_BLOCK_SPARSITY = 0.6
HEURISTIC_CSR_SPARSITY = 0.8

Measure = Callable[[str, str, Any], float]


@dataclasses.dataclass
class _Layer:
    kind: str                      # "linear" | "conv2d"
    name: str
    op_var: Any                    # var bound to matmul / conv2d
    last_var: Any                  # var whose value the kernel produces (after bias/relu)
    drop: list                     # vars whose bindings disappear (fused add/relu)
    x: Any                         # activation expr
    x_shape: tuple
    out_shape: tuple
    weight: np.ndarray             # linear: [N, K]; conv: [O, I, kh, kw]
    bias: np.ndarray | None
    relu: bool
    dense_bindings: list           # [(var, value)] of the original layer, in order
    conv_attrs: dict | None = None


def _const_value(expr, bindings):
    from tvm import relax

    if isinstance(expr, relax.Var) and expr in bindings:
        expr = bindings[expr]
    if _op_name(expr) == "relax.reshape" and isinstance(expr.args[0], _const_type()):
        # the ONNX importer's conv bias: reshape(constant [O], (1, O, 1, 1))
        shape = _shape(expr)
        v = _const_value(expr.args[0], bindings)
        return None if v is None or shape is None else v.reshape(shape)
    if isinstance(expr, _const_type()):
        v = expr.value
        return v.numpy() if hasattr(v, "numpy") else None
    return None


def _const_type():
    import tvm

    return tvm.ir.expr.Constant


def _shape(expr):
    try:
        return tuple(int(d) for d in expr.ty.shape)
    except Exception:  # noqa: BLE001 - dynamic or unknown shape: not matched
        return None


def _op_name(call) -> str | None:
    from tvm import relax

    if isinstance(call, relax.Call) and isinstance(call.op, _tvm_op_type()):
        return str(call.op.name)
    return None


def _tvm_op_type():
    import tvm

    return tvm.ir.Op


class _Dataflow:
    """The var bindings of a Relax function's dataflow blocks: value of each var, binding
    order, use counts, and the calls consuming each var."""

    def __init__(self, func):
        from tvm import relax

        self.bindings, self.order, self.uses = {}, [], {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.bindings[b.var] = b.value
                    self.order.append(b.var)
                    self._count_uses(b.value)
        self._count_uses(func.body.body)
        self.consumer = {}
        for v in self.order:
            val = self.bindings[v]
            if isinstance(val, relax.Call):
                for a in val.args:
                    if isinstance(a, relax.Var):
                        self.consumer.setdefault(a, []).append(v)

    def _count_uses(self, expr):
        from tvm import relax

        for v in relax.analysis.free_vars(expr) if not isinstance(expr, relax.Var) else [expr]:
            self.uses[v] = self.uses.get(v, 0) + 1

    def single_next(self, var, op_name):
        """The var's only consumer, when it is an `op_name` call."""
        users = self.consumer.get(var, [])
        if self.uses.get(var, 0) == 1 and len(users) == 1 and _op_name(self.bindings[users[0]]) == op_name:
            return users[0]
        return None


def _matmul_weight(flow: _Dataflow, call, x_shape) -> tuple[np.ndarray, list] | None:
    """(weight as [N, K], bindings it replaces) of a matmul by a constant (or by the
    permute_dims of one), or None."""
    from tvm import relax

    w_expr = call.args[1]
    dense_bindings = []
    w = _const_value(w_expr, flow.bindings)
    if w is not None:
        if isinstance(w_expr, relax.Var):
            return None          # constant bound to a var: keep simple, not matched
        if w.ndim != 2:
            return None
        w_nk = np.ascontiguousarray(w.T)
    else:
        pd = flow.bindings.get(w_expr) if isinstance(w_expr, relax.Var) else None
        if _op_name(pd) != "relax.permute_dims" or flow.uses.get(w_expr, 0) != 1:
            return None
        c = _const_value(pd.args[0], flow.bindings)
        axes = pd.attrs.axes
        if c is None or c.ndim != 2 or (axes is not None and [int(a) for a in axes] != [1, 0]):
            return None
        w_nk = np.ascontiguousarray(c)
        dense_bindings.append((w_expr, pd))
    if len(x_shape) < 2 or x_shape[-1] != w_nk.shape[1]:
        return None
    return w_nk, dense_bindings


def _conv2d_weight(flow: _Dataflow, call) -> np.ndarray | None:
    """The OIHW constant weight of an NCHW conv2d, or None."""
    from tvm import relax

    w_expr = call.args[1]
    w = _const_value(w_expr, flow.bindings)
    a = call.attrs
    if w is None or isinstance(w_expr, relax.Var) or str(a.data_layout) != "NCHW" \
            or str(a.kernel_layout) != "OIHW" or str(a.out_layout) != "NCHW":
        return None
    return w


def _fusable_bias(flow: _Dataflow, v, add, kind: str, n_out: int):
    """(bias [n_out] float32, the bias var to drop or None) when the `add` after layer
    output `v` adds a per-output-channel constant; None otherwise."""
    from tvm import relax

    other = [a for a in flow.bindings[add].args if not (isinstance(a, relax.Var) and a.same_as(v))]
    b = _const_value(other[0], flow.bindings) if len(other) == 1 else None
    ok = b is not None and b.size == n_out and (
        (kind == "linear" and b.shape[-1:] == (n_out,)) or
        (kind == "conv2d" and b.reshape(-1).size == n_out and b.ndim in (1, 3, 4)
         and (b.ndim == 1 or b.shape[-2:] == (1, 1))))
    bias_var = other[0] if len(other) == 1 and isinstance(other[0], relax.Var) else None
    if bias_var is not None and (_op_name(flow.bindings.get(bias_var)) != "relax.reshape"
                                 or flow.uses.get(bias_var, 0) != 1):
        ok = False  # a bias var is only fused when it is the importer's reshape of a constant
    if not ok:
        return None
    return b.reshape(n_out).astype(np.float32), bias_var


def _conv2d_attrs(call) -> dict:
    a = call.attrs
    pad = [int(p) for p in a.padding]
    pad = pad * 2 if len(pad) == 2 else pad
    return {"strides": tuple(int(s) for s in a.strides), "padding": tuple(pad),
            "dilation": tuple(int(d) for d in a.dilation), "groups": int(a.groups)}


def _find_layers(func, min_sparsity: float, log) -> list[_Layer]:
    flow = _Dataflow(func)
    bindings = flow.bindings
    layers = []
    for v in flow.order:
        call = bindings[v]
        op = _op_name(call)
        if op not in ("relax.matmul", "relax.nn.conv2d"):
            continue
        if str(call.ty.dtype) != "float32":
            continue
        x = call.args[0]
        x_shape, out_shape = _shape(x), _shape(call)
        if x_shape is None or out_shape is None:
            continue
        if op == "relax.matmul":
            found = _matmul_weight(flow, call, x_shape)
            if found is None:
                continue
            (weight, dense_bindings), kind = found, "linear"
        else:
            weight, dense_bindings, kind = _conv2d_weight(flow, call), [], "conv2d"
            if weight is None:
                continue
        sp = structure.sparsity(weight)
        if sp < min_sparsity:
            continue
        dense_bindings.append((v, call))
        last, drop, bias, relu = v, [], None, False
        add = flow.single_next(v, "relax.add")
        fused = _fusable_bias(flow, v, add, kind, weight.shape[0]) if add is not None else None
        if fused is not None:
            (bias, bias_var), last = fused, add
            if bias_var is not None:
                drop.append(bias_var)
                dense_bindings.append((bias_var, bindings[bias_var]))
            drop.append(add)
            dense_bindings.append((add, bindings[add]))
        rl = flow.single_next(last, "relax.nn.relu")
        if rl is not None:
            relu, last = True, rl
            drop.append(rl)
            dense_bindings.append((rl, bindings[rl]))
        conv_attrs = _conv2d_attrs(call) if kind == "conv2d" else None
        name = f"{kind}{len(layers)}:{v.name}"
        layers.append(_Layer(kind, name, v, last, drop, x, x_shape, _shape(bindings[last]) or out_shape,
                             weight, bias, relu, dense_bindings, conv_attrs))
    return layers


def candidates_for(layer: _Layer, cores: int) -> list:
    if layer.kind == "linear":
        from . import linear

        M = int(np.prod(layer.x_shape[:-1]))
        return linear.linear_candidates(layer.weight, layer.bias, M, cores=cores, relu=layer.relu,
                                        out_shape=layer.out_shape)
    try:
        from .conv import conv_candidates
    except (ImportError, AttributeError):
        return []
    a = layer.conv_attrs
    try:
        return conv_candidates(layer.weight, layer.bias, layer.x_shape, a["strides"], a["padding"],
                               a["dilation"], a["groups"], "float32", relu=layer.relu)
    except TypeError:  # an older signature without relu
        if layer.relu:
            return []
        return conv_candidates(layer.weight, layer.bias, layer.x_shape, a["strides"], a["padding"],
                               a["dilation"], a["groups"], "float32")


def _mark_scheduled(prim_func, name: str):
    # MetaSchedule must neither tune nor count hand-scheduled kernels.
    # op_pattern 8 (kOpaque): FuseOps must not wrap the kernel into a fused copy.
    return (prim_func.without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
            .with_attr("op_pattern", 8).with_attr("graphprune.kernel", True))


def _emit_kernel(bb, layer: _Layer, cand, x_expr, gname: str):
    """Emit (reshape), call_tir, (reshape) into `bb`; returns the final expression."""
    from tvm import relax

    gv = bb.add_func(_mark_scheduled(cand.prim_func, gname), gname)
    x = x_expr
    if layer.kind == "linear" and len(layer.x_shape) != 2:
        M = int(np.prod(layer.x_shape[:-1]))
        x = bb.emit(relax.op.reshape(x, (M, layer.x_shape[-1])))
    consts = [relax.const(np.ascontiguousarray(c)) for c in cand.constants]
    out = relax.call_tir(gv, [x, *consts], relax.TensorType(tuple(cand.out_shape), cand.out_dtype))
    if tuple(cand.out_shape) != tuple(layer.out_shape):
        out = relax.op.reshape(bb.emit(out), layer.out_shape)
    return out


def layer_module(layer: _Layer, cand=None):
    """A module whose main computes just this layer: dense (cand None) or with `cand`."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(layer.x_shape, "float32"))
    with bb.function("main", [x], attrs={"num_input": 1}):
        with bb.dataflow():
            if cand is None:
                out = _emit_dense(bb, layer, x)
            else:
                out = bb.emit(_emit_kernel(bb, layer, cand, x, "sparse_kernel"))
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def _emit_dense(bb, layer: _Layer, x):
    """Re-emit the layer's original bindings with `x` for its activation."""
    from tvm import relax

    mapping = {layer.x: x}

    def sub(e):
        if isinstance(e, relax.Var) and e in mapping:
            return mapping[e]
        return e

    out = None
    for var, value in layer.dense_bindings:
        new_args = [sub(a) for a in value.args]
        new_call = relax.Call(value.op, new_args, value.attrs, value.ty_args)
        out = bb.emit(new_call)
        mapping[var] = out
    return out


def heuristic_choice(layer: _Layer, cands: list):
    """No device to measure on: the largest-block candidate (or a 3x3 pattern kernel) from
    HEURISTIC_BLOCK_SPARSITY, CSR (or N:M) from HEURISTIC_CSR_SPARSITY, else dense (None)."""
    sp = structure.sparsity(layer.weight)
    blocks = [c for c in cands if c.info.get("block", [1, 1]) != [1, 1] and c.info.get("format") == "bsr"]
    if blocks and sp >= HEURISTIC_BLOCK_SPARSITY:
        return max(blocks, key=lambda c: (c.info["block"][0] * c.info["block"][1], c.info["block"][0]))
    patterns = [c for c in cands if c.info.get("format") == "pattern"]
    if patterns and sp >= HEURISTIC_BLOCK_SPARSITY:  # 3x3 patterns: fixed taps, vectorised like blocks
        return patterns[0]
    if sp >= HEURISTIC_CSR_SPARSITY:
        for name in ("csr",):
            for c in cands:
                if c.name == name:
                    return c
        if cands:
            return cands[0]
    return None


def _against_ort(row: dict, layer: _Layer, best_ms: float, ort_dense, notes: list) -> None:
    """The chosen kernel against ONNX Runtime's dense kernel for the layer (see rewrite_sparse)."""
    try:
        ort_ms = float(ort_dense(layer))
    except Exception as e:  # noqa: BLE001 - the comparison is missing, the kernel choice stands
        notes.append(f"{layer.name}: ONNX Runtime dense timing failed ({type(e).__name__}: {e})")
        return
    row["ort_dense_ms"] = round(ort_ms, 4)
    row["speedup_vs_ort"] = round(ort_ms / best_ms, 3)


def rewrite_sparse(mod, *, measure: Measure | None, min_sparsity: float = 0.5, cores: int = 4,
                   log: Callable[[str], Any] = lambda s: None, ort_dense: Callable[[Any], float] | None = None):
    """-> (rewritten module, choice table, notes). See the module docstring. `ort_dense`:
    layer -> ONNX Runtime's dense latency of it in ms (`ort_dense.ort_dense_ms`, when the
    layers are measured on this host): each measured row then also has `ort_dense_ms` and
    `speedup_vs_ort` (ORT dense ms / the chosen kernel's ms) beside `speedup` (vs TVM dense)."""

    func = mod["main"]
    layers = _find_layers(func, min_sparsity, log)
    table, notes, chosen = [], [], {}
    if not layers:
        return mod, table, notes
    if measure is None:
        notes.append(f"sparse kernels chosen without measuring (no device): block formats from "
                     f"{HEURISTIC_BLOCK_SPARSITY:.0%} zeros, CSR from {HEURISTIC_CSR_SPARSITY:.0%}")
    for layer in layers:
        row = {"layer": layer.name, "kind": layer.kind, "shape": [list(layer.x_shape), list(layer.weight.shape)],
               "sparsity": round(structure.sparsity(layer.weight), 4),
               "fused": (["bias"] if layer.bias is not None else []) + (["relu"] if layer.relu else []),
               "candidates": {}, "dense_ms": None, "chosen": "dense", "speedup": 1.0}
        try:
            cands = candidates_for(layer, cores)
        except Exception as e:  # noqa: BLE001 - a generator failure keeps the dense layer
            notes.append(f"{layer.name}: kernel generation failed ({type(e).__name__}: {e}); kept dense")
            cands = []
        if not cands:
            table.append(row)
            continue
        best = None
        if measure is None:
            best = heuristic_choice(layer, cands)
            row["chosen"] = best.name if best else "dense"
            row["speedup"] = None
            row["measured"] = False
        else:
            row["measured"] = True
            try:
                dense_ms = float(measure("dense", layer.name, layer_module(layer)))
            except Exception as e:  # noqa: BLE001
                notes.append(f"{layer.name}: dense timing failed ({type(e).__name__}: {e}); kept dense")
                table.append(row)
                continue
            row["dense_ms"] = round(dense_ms, 4)
            best_ms = dense_ms
            for cand in cands:
                try:
                    ms = float(measure(cand.name, layer.name, layer_module(layer, cand)))
                except Exception as e:  # noqa: BLE001 - a failing candidate is just not chosen
                    notes.append(f"{layer.name}: candidate {cand.name} failed ({type(e).__name__}: {e})")
                    continue
                row["candidates"][cand.name] = round(ms, 4)
                if ms < best_ms:
                    best, best_ms = cand, ms
            if best is not None:
                row["chosen"] = best.name
                row["speedup"] = round(dense_ms / best_ms, 3)
            if ort_dense is not None:
                _against_ort(row, layer, best_ms, ort_dense, notes)
        if best is not None:
            row["info"] = {k: v for k, v in best.info.items() if k != "sparsity"}
            chosen[layer.op_var] = (layer, best)
        log(f"tvm: sparse {layer.name} ({row['sparsity']:.0%} zeros): {row['chosen']}"
            + (f" ({row['speedup']}x vs dense)" if row.get("speedup") not in (None, 1.0) else "")
            + (f" ({row['speedup_vs_ort']}x vs ONNX Runtime dense)" if row.get("speedup_vs_ort") else ""))
        table.append(row)
    if not chosen:
        return mod, table, notes
    return _apply(mod, chosen), table, notes


def _apply(mod, chosen: dict):
    from tvm import relax

    drop = set()
    by_last = {}
    for layer, cand in chosen.values():
        drop.update(layer.drop)
        by_last[layer.last_var] = (layer, cand)
    counter = [0]

    @relax.expr_functor.mutator
    class _Mutator(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            v = binding.var
            if v in chosen:
                layer, cand = chosen[v]
                counter[0] += 1
                gname = f"gp_sparse_{cand.name.replace(':', '_')}_{counter[0]}"
                x = self.visit_expr(layer.x)
                out = _emit_kernel(self.builder_, layer, cand, x, gname)
                last = layer.last_var
                new_var = (relax.DataflowVar if isinstance(last, relax.DataflowVar) else relax.Var)(
                    last.name, last.ty)
                self.builder_.emit_normalized(relax.VarBinding(new_var, self.builder_.normalize(out)))
                self.set_var_remap(last, new_var)
                return
            if v in drop:
                return
            super().visit_var_binding_(binding)

    m = _Mutator(mod)
    new_main = m.visit_expr(mod["main"])
    out = m.builder_.get()
    out["main"] = new_main
    out = relax.transform.DeadCodeElimination(["main"])(out)
    return out
