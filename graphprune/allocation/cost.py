"""Cost of a selection before applying it: MACs and parameters as functions of the kept
fraction of every slot.

Each MAC-bearing node (the weighted ops of `ir.layers`, the recurrent ops, Einsum, ONNX
Runtime's MoE and Attention) and each float constant is a *term*: its dense cost at concrete shapes
times the product of kept fractions of the slots its cost is multiplicative in (a conv:
output channels and input channels per group). Removing atoms of a group changes the kept fraction of that group's slots only,
so evaluating a selection is a few vectorised products — cheap enough for the searches
of the target-driven allocations.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from graphprune.analysis.cost import is_recurrent, recurrent_steps_batch
from graphprune.analysis.dependency.context import Slot
from graphprune.analysis.dependency.graph import DependencyGraph
from graphprune.ir.constants import const_array, is_constant
from graphprune.ir.layers import attrs_of, layer_of
from graphprune.ir.moe import active_macs, expert_values, is_moe, top_k
from graphprune.ir.ms_attention import attention_macs, is_attention
from graphprune.ir.nbits import logical_params
from graphprune.ir.quant import is_quantized_weight

log = logging.getLogger(__name__)


def mac_terms(model: ir.Model, shapes: dict[str, tuple]) -> list[tuple[ir.Node, float, list[Slot]]]:
    """(node, dense MACs, slots the cost scales with) for every MAC-bearing node."""
    out = []

    def shp(v):
        if v is None:
            return None
        if v.name in shapes:
            return shapes[v.name]
        if is_constant(v):
            a = const_array(v)
            return tuple(a.shape) if a is not None else None
        return None

    for node in model.graph:
        if is_moe(node):
            term = _moe_mac_term(node, shp)
            if term is not None:
                out.append(term)
            continue
        if is_attention(node):
            out.extend(_attention_mac_terms(node, shp))
            continue
        if is_recurrent(node):
            out.extend(_recurrent_mac_terms(node, shp))
            continue
        if node.op_type == "Einsum" and node.domain in ("", "ai.onnx"):
            out.extend(_einsum_mac_terms(node, shp))
            continue
        layer = layer_of(node)
        if layer is None:
            continue
        try:
            attrs = attrs_of(node)
            x, w, ys = shp(layer.x), shp(layer.w), shp(layer.y)
            factors = layer.op.mac_factors(attrs, x, w, ys)
            if factors is None:
                raise TypeError("shape unknown")
            macs = float(np.prod(factors[0])) * float(np.prod(factors[1]))
            ranks = (len(x) if x is not None else None, len(ys) if ys is not None else None)
            slots = [Slot(layer.value(role).name, axis) for role, axis in layer.op.mac_slots(attrs, *ranks)]
        except (TypeError, IndexError):
            log.debug("no concrete shapes for %s; its MACs are not counted", node.name)
            continue
        out.append((node, macs, slots))
    return out


def _moe_mac_term(node: ir.Node, shp) -> tuple[ir.Node, float, list[Slot]] | None:
    """ONNX Runtime's MoE: its active MACs (ir.moe.active_macs), multiplicative in the
    expert-FFN channels (fc1 axis 1) and the hidden size (fc1 axis 2)."""
    x, fc1, fc2 = (shp(node.inputs[i]) if len(node.inputs) > i else None for i in (0, 2, 4))
    if x is None or fc1 is None or fc2 is None or len(fc1) != 3:
        log.debug("no concrete shapes for %s; its MACs are not counted", node.name)
        return None
    fc3 = shp(node.inputs[6]) if len(node.inputs) > 6 else None
    return node, active_macs(x, fc1, fc2, fc3, top_k(node)), [Slot(node.inputs[2].name, 1),
                                                                Slot(node.inputs[2].name, 2)]


def _attention_mac_terms(node: ir.Node, shp) -> list[tuple[ir.Node, float, list[Slot]]]:
    """ONNX Runtime's Attention: the packed projection, multiplicative in its weight's input
    (axis 0) and head columns (axis 1), and the scores and weighted sum, in the heads alone."""
    x, w = shp(node.inputs[0]), shp(node.inputs[1]) if len(node.inputs) > 1 else None
    macs = attention_macs(node, x, w) if x is not None and w is not None else None
    if macs is None:
        log.debug("no concrete shapes for %s; its MACs are not counted", node.name)
        return []
    weight = node.inputs[1].name
    return [(node, macs[0], [Slot(weight, 0), Slot(weight, 1)]), (node, macs[1], [Slot(weight, 1)])]


def _recurrent_mac_terms(node: ir.Node, shp) -> list[tuple[ir.Node, float, list[Slot]]]:
    """RNN/GRU/LSTM (analysis.cost's count): per step gates·H·I MACs of W·x, multiplicative in
    W's gate rows (axis 1) and input columns (axis 2), and gates·H·H of R·h, in R's rows and
    columns (both the hidden size). They were no term at all: a --target-macs on an LSTM
    model was met by the other layers alone (predicted 0.69, written 0.52)."""
    x, w, r = (shp(node.inputs[i]) for i in range(3))
    if x is None or w is None or r is None or len(x) != 3 or len(w) != 3 or len(r) != 3:
        log.debug("no concrete shapes for %s; its MACs are not counted", node.name)
        return []
    steps, batch = recurrent_steps_batch(node, x)
    per_step = float(steps * batch * w[0])  # directions
    W, R = node.inputs[1].name, node.inputs[2].name
    return [(node, per_step * w[1] * w[2], [Slot(W, 1), Slot(W, 2)]),
            (node, per_step * r[1] * r[2], [Slot(R, 1), Slot(R, 2)])]


def _einsum_mac_terms(node: ir.Node, shp) -> list[tuple[ir.Node, float, list[Slot]]]:
    """An Einsum of two or more operands (analysis.cost counts one MAC per combination of its
    labels): multiplicative in each label's size, read off the first operand axis holding it
    (ir.einsum.label_sizes)."""
    from graphprune.ir.einsum import label_sizes

    ins = [v for v in node.inputs if v is not None]
    dims = [shp(v) for v in ins]
    sizes = label_sizes(node, dims) if len(ins) >= 2 and None not in dims else None
    if sizes is None:
        return []
    macs = float(np.prod([n for _, _, n in sizes.values()])) if sizes else 0.0
    return [(node, macs, [Slot(ins[i].name, ax) for i, ax, _ in sizes.values()])]


def _expert_share(model: ir.Model) -> dict[str, float]:
    """{expert tensor: k / E}: the share of an MoE layer's expert weights one token reads."""
    share = {}
    for node in model.graph:
        a = const_array(node.inputs[2]) if is_moe(node) and len(node.inputs) > 2 else None
        if a is None or a.ndim != 3:
            continue
        for v in expert_values(node):
            share[v.name] = min(1.0, top_k(node) / a.shape[0])
    return share


def param_terms(model: ir.Model, active: bool = False) -> list[tuple[str, float, list[Slot]]]:
    """(tensor, parameters, its slots) per float constant and quantized weight (as
    analysis.cost counts parameters); `active`: an MoE layer's expert
    tensors count k/E of their size (the parameters one token reads)."""
    share = _expert_share(model) if active else {}
    out = []
    seen = set()
    values = list(model.graph.initializers.values()) + [o for n in model.graph for o in n.outputs]
    for v in values:
        if v.name in seen or not is_constant(v):
            continue
        seen.add(v.name)
        a = const_array(v)
        if a is None or not (np.issubdtype(a.dtype, np.floating) or is_quantized_weight(v)):
            continue
        size = logical_params(v) or a.size  # a MatMulNBits weight: its codes, not its bytes
        out.append((v.name, float(size) * share.get(v.name, 1.0), [Slot(v.name, i) for i in range(a.ndim)]))
    return out


class CostModel:
    """Σ_terms dense × Π kept fractions, for selections on `dg`'s groups."""

    def __init__(self, dg: DependencyGraph, terms: list[tuple[object, float, list[Slot]]]):
        self.dg = dg
        self.groups = {g.id: g for g in dg.groups}
        slot_ids: dict[Slot, int] = {}
        for g in dg.groups:
            for s in g.slots:
                slot_ids.setdefault(s, len(slot_ids))
        self.slot_ids = slot_ids
        self.one = len(slot_ids)  # index of a constant 1 fraction
        k = max((len(t[2]) for t in terms), default=1)
        self.base = np.array([t[1] for t in terms], dtype=np.float64)
        self.keys = [t[0] for t in terms]
        idx = np.full((len(terms), max(k, 1)), self.one, dtype=np.int64)
        for i, (_, _, slots) in enumerate(terms):
            for j, s in enumerate(slots):
                idx[i, j] = slot_ids.get(s, self.one)
        self.idx = idx
        # per group: (slot index array, counts matrix slots × atoms, sizes)
        self._counts = {}
        for g in dg.groups:
            sl = [s for s in g.slots if s in slot_ids]
            counts = np.stack([np.bincount(g.labels[s], minlength=g.num_atoms) for s in sl]) if sl else \
                np.zeros((0, g.num_atoms))
            self._counts[g.id] = (np.array([slot_ids[s] for s in sl], dtype=np.int64), counts.astype(np.float64),
                                  np.array([g.sizes[s] for s in sl], dtype=np.float64))
        self.dense = float(self.base.sum())

    def fractions(self, selection: dict[int, list[int]]) -> np.ndarray:
        f = np.ones(self.one + 1)
        for gid, atoms in selection.items():
            if gid not in self._counts or not len(atoms):
                continue
            ids, counts, sizes = self._counts[gid]
            mask = np.zeros(counts.shape[1])
            mask[np.asarray(list(atoms), dtype=np.int64)] = 1.0
            f[ids] = (sizes - counts @ mask) / sizes
        return f

    def per_term(self, selection: dict[int, list[int]]) -> np.ndarray:
        f = self.fractions(selection)
        return self.base * np.prod(f[self.idx], axis=1)

    def total(self, selection: dict[int, list[int]]) -> float:
        return float(self.per_term(selection).sum())

    def ratio(self, selection: dict[int, list[int]]) -> float:
        return self.total(selection) / self.dense if self.dense > 0 else 1.0


def mac_model(model: ir.Model, dg: DependencyGraph, shapes: dict[str, tuple]) -> CostModel:
    return CostModel(dg, mac_terms(model, shapes))


def param_model(model: ir.Model, dg: DependencyGraph, active: bool = False) -> CostModel:
    return CostModel(dg, param_terms(model, active))


def mac_shapes(model: ir.Model, feeds: dict) -> dict[str, tuple]:
    """Concrete shapes of the tensors the MAC terms read, from one ONNX Runtime run."""
    from graphprune.runtime.ort import concrete_shapes

    names = []
    for node in model.graph:
        if (is_moe(node) or is_attention(node) or is_recurrent(node)) and node.inputs[0] is not None \
                and not is_constant(node.inputs[0]):
            names.append(node.inputs[0].name)
        if node.op_type == "Einsum":
            names += [v.name for v in node.inputs if v is not None and not is_constant(v)]
        layer = layer_of(node)
        if layer is not None:
            for v in (layer.x, layer.y):
                if v is not None and not is_constant(v):
                    names.append(v.name)
    return concrete_shapes(model, names, feeds) if names else {}
