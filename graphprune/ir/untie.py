"""Untying shared all-zero constants before analysis, and tying them again on save.

Exporters store one tensor once and let every node that needs those values read it:
BERT's default-init biases are all zero, and the exporter keeps one zero bias of each
size (`embeddings.LayerNorm.bias` feeds 15 nodes). The dependency analysis couples every
consumer of a constant through it, so that one tensor merges the attention heads and FFN
channels of unrelated layers into one group.

Why only *all-zero* tensors. The plan contract (README, plan.json) names tensors of the
*input* model: zeroing the listed slices of the input model gives the masked original.
Once a shared tensor T is copied per consumer (T for the first, T__untied1 ... for the
others), a plan may remove different slices from the copies, and no set of zeroed slices
of T alone expresses that in general: zeroing the union would also zero, for consumer A,
the slices only consumer B lost. For an all-zero T it does not matter: zeroing any slice
of it changes nothing, so the masked original is the input model with the *other* listed
slices zeroed whatever the copies lose. The copies are therefore left out of the plan's
`tensors` (see `plan.build_plan`), every name the plan lists stays a tensor of the input
model, version-1 plans keep their meaning, and replay unties the same way (deterministic,
by node order) before deriving the atoms. A non-zero shared tensor (tied weights, a ones
norm scale) stays shared and keeps coupling its consumers: safe, if strict.

Untying happens in the analysed model only (`load_onnx` with folding, not the oracle's
as-read original, not the torch frontend, whose plans name module parameters). The
copies are recorded in the model's metadata (`graphprune.untied`: copy → original), which
survives cloning; `retied` ties copies that are still equal back to one tensor while a
model is written, so the saved model grows only by copies a plan actually sliced.
"""
from __future__ import annotations

import contextlib
import json

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_array, is_constant, np_tensor, values_by_name

KEY = "graphprune.untied"


def untied_copies(model: ir.Model) -> dict[str, str]:
    """copy name → name of the shared input-model tensor it was copied from."""
    text = model.metadata_props.get(KEY)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def untie_shared_zeros(model: ir.Model) -> dict[str, list[str]]:
    """Give every main-graph consumer of a shared, all-zero float constant (more than one
    element) its own copy. Returns original name → names of the copies made."""
    graph = model.graph
    outputs = {id(v) for v in graph.outputs}
    candidates: list[ir.Value] = list(graph.initializers.values())
    candidates += [n.outputs[0] for n in graph if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                   and len(n.outputs) == 1]
    names = set(graph.initializers) | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    made: dict[str, list[str]] = {}
    record = untied_copies(model)
    for v in candidates:
        if v.is_graph_input() or id(v) in outputs or not is_constant(v):
            continue
        if v.dtype is None or not v.dtype.is_floating_point():
            continue
        consumers: list[ir.Node] = []
        for use in v.uses():
            if use.node.graph is not graph:  # read inside a subgraph: leave those as they are
                continue
            if all(use.node is not c for c in consumers):
                consumers.append(use.node)
        if len(consumers) < 2:
            continue
        if not _all_zero(v):
            continue
        arr = const_array(v)
        for k, node in enumerate(consumers[1:], start=1):
            name = f"{v.name}__untied{k}"
            while name in names:
                name += "_"
            names.add(name)
            copy = ir.Value(name=name, const_value=np_tensor(np.array(arr), name=name), shape=ir.Shape(arr.shape),
                            type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)))
            graph.register_initializer(copy)
            for i, inp in enumerate(node.inputs):
                if inp is v:
                    node.replace_input_with(i, copy)
            record[name] = v.name
            made.setdefault(v.name, []).append(name)
    if made:
        model.metadata_props[KEY] = json.dumps(record, sort_keys=True)
    return made


def _all_zero(v: ir.Value) -> bool:
    """Whether a constant of more than one element is all zeros, read in place (a memory map
    of external data is not copied: a shared token table was, twice, to find it nonzero)."""
    t = v.const_value
    if isinstance(t, ir.ExternalTensor):
        try:
            return _zeros(t.numpy())
        finally:
            t.release()  # the view is gone once _zeros returns
    return _zeros(t.numpy() if t is not None else const_array(v))


def _zeros(arr: np.ndarray | None) -> bool:
    if arr is None or arr.size < 2:
        return False
    flat = arr.reshape(-1)
    return not flat[:64].any() and not flat.any()  # a weight is nonzero at once


def ties_back(model: ir.Model) -> list[tuple[ir.Value, ir.Value]]:
    """(copy, the family member it equals): the untied copies that are still equal (same
    dtype, shape and values) to a surviving member of their family, which `retied` makes
    one tensor again when the model is written. Figures of the model as written (params,
    bytes) leave these copies out."""
    record = untied_copies(model)
    if not record:
        return []
    values = values_by_name(model)
    out = []
    for orig in sorted(set(record.values())):
        members = [values[n] for n in [orig] + sorted(c for c, o in record.items() if o == orig) if n in values]
        keep: list[tuple[ir.Value, np.ndarray]] = []
        for m in (m for m in members if is_constant(m)):
            arr = const_array(m)
            rep = next((r for r, a in keep if a.dtype == arr.dtype and a.shape == arr.shape
                        and np.array_equal(a, arr)), None)
            if rep is None or m.name not in record:  # the original tensor itself is never dropped
                keep.append((m, arr))
            else:
                out.append((m, rep))
    return out


@contextlib.contextmanager
def retied(model: ir.Model):
    """While the block runs, the untying is undone where copies are still equal to a
    surviving member of their family (`ties_back`), and the metadata record is gone;
    afterwards the model is exactly as before (analyses stay valid)."""
    if not untied_copies(model):
        yield model
        return
    graph = model.graph
    swaps: list[tuple[ir.Node, int, ir.Value]] = []
    dropped: list[ir.Value] = []
    for m, rep in ties_back(model):
        for use in list(m.uses()):
            swaps.append((use.node, use.idx, m))
            use.node.replace_input_with(use.idx, rep)
        if m.name in graph.initializers:
            graph.initializers.pop(m.name)
            dropped.append(m)
    text = model.metadata_props.pop(KEY)
    try:
        yield model
    finally:
        for m in dropped:
            graph.register_initializer(m)
        for node, idx, m in reversed(swaps):
            node.replace_input_with(idx, m)
        model.metadata_props[KEY] = text
