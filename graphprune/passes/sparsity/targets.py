"""Which layers get sparsified, and their weights as a logical ``[out, in]`` matrix.

Layers: Gemm and MatMul with a constant weight (Gemm ``transB`` and MatMul's ``[K, N]``
layout are read off `importance.layers.Linear`), and Conv (1×1, k×k, grouped). Logical
matrix of a Conv weight ``[O, I/g, kh, kw]``: rows = O, columns = ``(kh, kw, I/g)`` with
the input channel innermost — so an N:M group is a run of consecutive *input channels at
one kernel tap* (one segment of I/g columns per tap). An r×c block of a conv spans whole
kernels: r output × c input channels × all taps (`sparsify.block_layout`). A grouped conv's
row o only sees the channels of its own group, so every format applies per row as is.

Skipped, each with a reason the pass reports: ConvTranspose, depthwise convs (a handful
of weights per output), weights shared by several nodes (e.g. a tied embedding used as
the LM head), non-float weights, layers under ``min_params`` weights, the first conv on
the model input (``skip_first``), the final classifier (``skip_last``: a layer with no
linear layer below it whose output reaches a graph output without a residual Add), and
names matched by ``ignore`` (regular expressions searched in, or shell globs matched
against, the node, weight and output names — like the structured pruning ``--ignore``).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune.importance.layers import Linear, linear_of
from graphprune.ir.constants import const_array
from graphprune.ir.layers import layer_of


@dataclass
class Target:
    lin: Linear
    op: str  # the weight layout: the op's family, MatMul | Gemm | Conv
    out_axis: int
    in_axis: int
    ig: int  # input channels per group (Gemm/MatMul: K)
    taps: int  # kernel taps (Gemm/MatMul: 1)
    group: int
    kernel: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.lin.w.name

    @property
    def node_name(self) -> str:
        return self.lin.node.name

    @property
    def seg_len(self) -> int:
        return self.ig

    def weight(self) -> np.ndarray:
        return const_array(self.lin.w)

    def logical(self, w: np.ndarray | None = None) -> np.ndarray:
        w = self.weight() if w is None else w
        if self.op == "Conv":
            return np.moveaxis(w, 1, -1).reshape(w.shape[0], -1)
        return np.moveaxis(w, (self.out_axis, self.in_axis), (0, 1))

    def physical(self, mat: np.ndarray, like: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            o, i = like.shape[:2]
            return np.moveaxis(mat.reshape((o,) + tuple(like.shape[2:]) + (i,)), -1, 1)
        return np.moveaxis(mat, (0, 1), (self.out_axis, self.in_axis))

    def natural_to_logical(self) -> np.ndarray:
        """Column permutation p with logical[:, j] = W.reshape(O, -1)[:, p[j]] — the
        reshape order is that of conv patches (input channel outer, taps inner)."""
        if self.op != "Conv":
            return np.arange(self.ig)
        t, c = np.meshgrid(np.arange(self.taps), np.arange(self.ig), indexing="ij")
        return (c * self.taps + t).ravel()


def _name_matches(patterns: list[str], names: list[str]) -> bool:
    for p in patterns:
        try:
            rx = re.compile(p)
        except re.error:
            rx = None
        for n in names:
            if (rx is not None and rx.search(n)) or fnmatch.fnmatchcase(n, p):
                return True
    return False


def _downstream(model: ir.Model, start: ir.Node) -> list[ir.Node]:
    seen, stack, out = {id(start)}, [start], []
    while stack:
        node = stack.pop()
        for o in node.outputs:
            for u in o.uses():
                if id(u.node) not in seen:
                    seen.add(id(u.node))
                    out.append(u.node)
                    stack.append(u.node)
    return out


def _upstream_has_linear(node: ir.Node, linear_ids: set[int]) -> bool:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        for v in n.inputs:
            p = v.producer() if v is not None else None
            if p is not None and id(p) not in seen:
                if id(p) in linear_ids:
                    return True
                seen.add(id(p))
                stack.append(p)
    return False


def _is_final_classifier(model: ir.Model, lin: Linear, linear_ids: set[int]) -> bool:
    below = _downstream(model, lin.node)
    if any(id(n) in linear_ids for n in below):
        return False
    if any(n.op_type in ("Add", "Sum") for n in below):
        return False  # the output joins a residual stream: a block's last layer, not a head
    outs = {v.name for v in model.graph.outputs}
    return lin.y.name in outs or any(o.name in outs for n in below for o in n.outputs)


def _skip_reason(model: ir.Model, lin: Linear, w: np.ndarray, linear_ids: set[int], *, ignore: list[str],
                 skip_first: bool, skip_last: bool, min_params: int) -> str | None:
    """Why find_targets leaves this layer dense, or None when it is eligible."""
    if ignore and _name_matches(ignore, [lin.name, lin.w.name, lin.y.name]):
        return "protected (ignore)"
    if lin.kind == "convtranspose":
        return "ConvTranspose is not sparsified"
    if not np.issubdtype(w.dtype, np.floating):
        return f"weight dtype {w.dtype} is not floating point"
    if len(list(lin.w.uses())) > 1:
        return f"weight shared by {len(list(lin.w.uses()))} nodes (e.g. tied embedding / LM head)"
    if lin.kind == "conv" and lin.group > 1 and w.shape[1] == 1:
        return "depthwise convolution"
    if w.size < min_params:
        return f"{w.size} weights < min_params {min_params}"
    if skip_first and lin.kind == "conv" and not _upstream_has_linear(lin.node, linear_ids):
        return "first convolution (skip_first)"
    if skip_last and _is_final_classifier(model, lin, linear_ids):
        return "final classifier (skip_last)"
    return None


def find_targets(model: ir.Model, *, ignore: list[str] | None = None, skip_first: bool = True,
                 skip_last: bool = True, min_params: int = 1024) -> tuple[list[Target], list[dict]]:
    """(eligible layers in graph order, skipped layers as {layer, weight, reason})."""
    ignore = list(ignore or [])
    lins = []
    skipped: list[dict] = []
    for node in model.graph:
        layer = layer_of(node)
        if layer is not None:
            lin = linear_of(node)
            if lin is None:
                if layer.w is not None and const_array(layer.w) is not None:
                    skipped.append({"layer": node.name, "weight": layer.w.name,
                                    "reason": f"{node.op_type} form not handled (constant data input, transA, "
                                              "alpha/beta or computed bias)"})
                continue
            lins.append(lin)
    linear_ids = {id(lin.node) for lin in lins}
    out: list[Target] = []
    for lin in lins:
        w = const_array(lin.w)
        reason = _skip_reason(model, lin, w, linear_ids, ignore=ignore, skip_first=skip_first, skip_last=skip_last,
                              min_params=min_params)
        if reason is not None:
            skipped.append({"layer": lin.name, "weight": lin.w.name, "reason": reason})
            continue
        if lin.kind == "conv":
            out.append(Target(lin, lin.op.family, 0, 1, int(w.shape[1]), int(np.prod(w.shape[2:], dtype=np.int64)),
                              lin.group, tuple(int(k) for k in w.shape[2:])))
        else:
            out.append(Target(lin, lin.op.family, lin.w_out_axis, lin.w_in_axis, int(w.shape[lin.w_in_axis]), 1, 1))
    return out, skipped
