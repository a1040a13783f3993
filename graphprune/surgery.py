"""Physical slot removal: rewrite a model so that given (value, axis) indices are gone.

Used by the pruning passes and by allocation's measured searches (which prune trial
copies), so it is a module of its own: allocation never imports the passes.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from graphprune.analysis.dependency import DependencyGraph, RewriteContext, Slot
from graphprune.gc_pause import gc_paused
from graphprune.ir.constants import const_array, is_constant, np_tensor, set_const_array
from graphprune.ir.mutation import mark_mutated, restamp_shapes, shapes_current
from graphprune.ir.unused import remove_unused


@gc_paused
def apply_removal(model: ir.Model, dg: DependencyGraph, removed: dict[Slot, np.ndarray]) -> None:
    """Rewrite `model` (the one `dg` was computed on, unchanged since) so the given slot
    indices are gone; `dg` and every other analysis of `model` are stale afterwards."""
    dg.check_current(model)
    empty = np.zeros(0, dtype=np.int64)
    names = set(model.graph.initializers) | {v.name for n in model.graph for v in n.outputs}
    counter = itertools.count()

    def unique_name(hint: str) -> str:
        base = "".join(c if c.isalnum() or c in "_.-/" else "_" for c in hint) or "value"
        name = base
        while name in names:
            name = f"{base}_{next(counter)}"
        names.add(name)
        return name

    def new_const(array: np.ndarray, hint: str) -> ir.Value:
        name = unique_name(hint)
        v = ir.Value(name=name, const_value=np_tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        model.graph.register_initializer(v)
        return v

    def slot_removed(slot: Slot) -> np.ndarray:
        return removed.get(slot, empty)

    replaced: dict[str, ir.Value] = {}
    touched_nodes = _touched_nodes(dg, removed)
    virtual_owners = {o for s in removed if s.virtual for o in _owner_prefixes(s.value)}
    rewrites = [(node, fn) for node, fn in dg.rewrites if id(node) in touched_nodes or node.name in virtual_owners]
    current = shapes_current(model)
    mark_mutated(model)  # before the rewrites: a failure half way must not look unchanged
    for node, fn in rewrites:
        fn(RewriteContext(node, slot_removed, new_const, unique_name, replaced))
    originals = {name: dg.values[name] for name in replaced if name in dg.values}
    dg.values.update(replaced)  # a value a rewrite put in another's place is the one to shrink
    _shrink_values(dg, removed)
    _shrink_replaced(originals, removed)
    remove_unused(model)
    if current:
        # every value that lost indices is a slot whose shape _shrink_values shrank: the shapes
        # stay current (checked against re-inference on 400 random graphs and 8 real models)
        restamp_shapes(model)


def _touched_nodes(dg: DependencyGraph, removed: dict[Slot, np.ndarray]) -> set[int]:
    """ids of the nodes producing or consuming a value that loses indices."""
    touched = set()
    for s in removed:
        v = dg.values.get(s.value)
        if v is None:
            continue
        if v.producer() is not None:
            touched.add(id(v.producer()))
        touched.update(id(u.node) for u in v.uses())
    return touched


def _kept_part(v: ir.Value, axes: dict[int, np.ndarray]) -> np.ndarray:
    """A constant without its removed indices, copied once per sliced axis straight from its
    storage (a memory map of the .onnx for large weights: no full copy first)."""
    t = v.const_value if v.const_value is not None and not v.is_graph_input() else None
    arr = t.numpy() if t is not None else const_array(v)
    for ax, idx in axes.items():
        keep = np.ones(arr.shape[ax], dtype=bool)
        keep[idx] = False
        arr = np.compress(keep, arr, axis=ax)
    if isinstance(t, ir.ExternalTensor):
        t.release()  # the kept part is an owned copy: the map can go
    return arr


def _shrink_values(dg: DependencyGraph, removed: dict[Slot, np.ndarray]) -> None:
    """Delete the removed indices from constants and shrink the recorded shapes of the others."""
    per_value: dict[str, dict[int, np.ndarray]] = {}
    for s, idx in removed.items():
        if not s.virtual:
            per_value.setdefault(s.value, {})[s.axis] = idx
    for name, axes in per_value.items():
        v = dg.values[name]
        if is_constant(v):
            set_const_array(v, _kept_part(v, axes))
        elif v.shape is not None:
            dims = list(v.shape)
            for ax, idx in axes.items():
                dims[ax] = int(dims[ax]) - len(idx)
            v.shape = ir.Shape(dims)


def _shrink_replaced(originals: dict[str, ir.Value], removed: dict[Slot, np.ndarray]) -> None:
    """A value a rewrite replaced but still reads (a mean scaled back to the original width
    reads the mean over the kept channels) loses the same indices as its replacement: its
    recorded shape shrinks too, or the model's shapes are stale there (onnx's strict
    inference: 'existing shape differ in dimension 1: (3) vs (6)')."""
    for name, v in originals.items():
        if v.shape is None or not v.uses():
            continue
        dims = list(v.shape)
        for s, idx in removed.items():
            if s.value == name and not s.virtual:
                dims[s.axis] = int(dims[s.axis]) - len(idx)
        v.shape = ir.Shape(dims)


def _owner_prefixes(virtual: str) -> list[str]:
    """The node names a virtual slot "~<node>/<tag>" may belong to: every prefix ending before
    a "/" (node names and a plugin's tags may hold "/" too), as a prefix test would match."""
    return [virtual[1:i] for i, ch in enumerate(virtual) if ch == "/"]

