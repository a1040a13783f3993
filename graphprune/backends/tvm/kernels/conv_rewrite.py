"""A small Relax rewrite putting the sparse conv kernels of ``conv.py`` into a model.

Stand-in used by the conv benchmark until the general rewriter (``rewrite.py``) covers
convolutions: it matches ``conv2d(x, W)`` with a constant weight, optionally followed by
``add(., reshape(const bias))`` and ``relu``, asks ``conv_candidates`` for kernels, times
them alone on this machine and emits ``call_tir`` of the fastest (bias and ReLU fused).
It does not compare against the dense layer: a conv with any candidate is replaced.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import conv


def _const_value(expr, lookup) -> np.ndarray | None:
    import tvm
    from tvm import relax

    while isinstance(expr, relax.Var):
        bound = lookup(expr)
        if bound is None:
            return None
        expr = bound
    if isinstance(expr, tvm.ir.Constant):
        return expr.value.numpy()
    if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.reshape":
        inner = _const_value(expr.args[0], lookup)
        return None if inner is None else inner.reshape(-1)
    return None


def replace_sparse_convs(mod, *, fuse_relu: bool = True, pick: Callable | None = None,
                         log: Callable[[str], Any] = lambda s: None):
    """(new module, [per-layer report dicts]). ``pick(candidates, data_shape)`` chooses
    one candidate (default: time each alone on this machine, keep the fastest)."""
    import tvm
    from tvm import relax

    pick = pick or _fastest
    reports: list[dict] = []

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, m):
            super().__init__(m)
            self.m = m
            self.heads: list = []   # (original call ending a chain, conv call, bias, relu)

        def _scan(self, func):
            """Chains conv2d [-> add(const bias)] [-> relu], each link the only user."""
            bindings = [b for blk in func.body.blocks for b in blk.bindings
                        if isinstance(b, relax.VarBinding)]
            value = {b.var: b.value for b in bindings}
            users: dict = {}
            for b in bindings:
                if isinstance(b.value, relax.Call):
                    for a in b.value.args:
                        if isinstance(a, relax.Var):
                            users.setdefault(a, []).append(b)

            def only_user(var, op):
                us = users.get(var, [])
                if len(us) == 1 and getattr(us[0].value.op, "name", "") == op:
                    return us[0]
                return None

            def lookup(v):
                return value.get(v)

            for b in bindings:
                call = b.value
                if not (isinstance(call, relax.Call)
                        and getattr(call.op, "name", "") == "relax.nn.conv2d"):
                    continue
                head, bias, relu = b, None, False
                add = only_user(b.var, "relax.add")
                if add is not None:
                    other = [a for a in add.value.args if not a.same_as(b.var)]
                    bv = _const_value(other[0], lookup) if len(other) == 1 else None
                    o = int(call.ty.shape[1])
                    if bv is not None and bv.size == o:
                        head, bias = add, bv
                if fuse_relu:
                    r = only_user(head.var, "relax.nn.relu")
                    if r is not None:
                        head, relu = r, True
                self.heads.append((head.value, call, bias, relu))

        def _replace(self, conv_call, bias, relu):
            attrs = conv_call.attrs
            if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                    or not isinstance(conv_call.args[1], tvm.ir.Constant)):
                return None
            weight = conv_call.args[1].value.numpy()
            shape = tuple(int(d) for d in conv_call.args[0].ty.shape)
            cands = conv.conv_candidates(weight, bias, shape, tuple(int(s) for s in attrs.strides),
                                         tuple(int(p) for p in attrs.padding),
                                         tuple(int(d) for d in attrs.dilation), int(attrs.groups),
                                         relu=relu)
            if not cands:
                return None
            best, timings = pick(cands, shape)
            gv = self.builder_.add_func(best.prim_func.with_attr("tirx.is_scheduled", True),
                                        "sparse_conv")
            consts = [relax.const(c) for c in best.constants]
            reports.append({"weight": list(weight.shape), "data": list(shape),
                            "strides": [int(s) for s in attrs.strides], "kernel": best.name,
                            "relu_fused": relu, "bias_fused": bias is not None,
                            "candidates_ms": timings, **best.info})
            log(f"sparse conv {list(weight.shape)}: {best.name} {timings}")
            data = self.visit_expr(conv_call.args[0])
            return relax.call_tir(gv, [data, *consts],
                                  relax.TensorType(best.out_shape, best.out_dtype))

        def visit_call_(self, call):
            for head, conv_call, bias, relu in self.heads:
                if call.same_as(head):
                    new = self._replace(conv_call, bias, relu)
                    if new is not None:
                        return new
            return self.visit_expr_post_order(call)

        def run(self):
            for gv, func in self.m.functions_items():
                if isinstance(func, relax.Function):
                    self.heads = []
                    self._scan(func)
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

    new = _Rewriter(mod).run()
    new = tvm.transform.Sequential([relax.transform.DeadCodeElimination()])(new)
    return new, reports


def _fastest(cands, data_shape):
    data = np.random.default_rng(0).standard_normal(data_shape).astype(np.float32)
    timings = {}
    for c in cands:
        timings[c.name] = round(conv.time_candidate(conv.build_candidate(c), data, repeats=10), 4)
    best = min(cands, key=lambda c: timings[c.name])
    return best, timings
