"""What the repair passes share: the dense reference, the plan's kept indices, layer-by-
layer waves in topological order, undo, and the output error on calibration data.

Repair changes weights beyond zeroing, so the oracle (pruned == masked original) is run
*before* repair; a repair pass instead checks that it keeps every tensor's shape and that
the error of the model outputs against the dense model, on the calibration data, goes
down — otherwise it undoes itself (``guard=true``, the default) and says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from graphprune.errors import UsageError
from graphprune.importance.layers import Linear, linear_layers, linear_of
from graphprune.ir.constants import const_array, set_const_array
from graphprune.ir.layers import bias_add
from graphprune.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class RepairInputs:
    dense: ir.Model
    calibration: object
    plan: Plan
    removed: dict[tuple[str, int], np.ndarray]


def repair_inputs(ctx, pass_name: str) -> RepairInputs:
    calib = ctx.results.get("calibration")
    dense = ctx.results.get("dense_model")
    plan = ctx.results.get("plan")
    if calib is None:
        raise UsageError(f"{pass_name} needs calibration data", hint="give --calib (or results['calibration'])")
    if dense is None or plan is None:
        raise UsageError(f"{pass_name} needs the dense model and the plan: run it after prune-channels with "
                         "calibration data in the context")
    removed = removed_map(plan)
    hidden = ctx.results.get("hidden")  # slice-hidden: the stream's activations lost these indices too
    if hidden is not None:
        removed.update({key: np.asarray(idx, dtype=np.int64) for key, idx in hidden["activations"].items()})
    return RepairInputs(dense, calib, plan, removed)


def check_choice(pass_name: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{pass_name}: {key}={value} is not one of {', '.join(choices)}")


def check_batches(pass_name: str, batches: int | None) -> None:
    if batches is not None and batches < 1:
        raise UsageError(f"{pass_name}: batches must be >= 1 (or left out for all), got {batches}")


def removed_map(plan: Plan) -> dict[tuple[str, int], np.ndarray]:
    """(value name, axis) → removed indices, for tensors and activations of the plan."""
    out: dict[tuple[str, int], np.ndarray] = {}
    for g in plan.groups:
        for key, idx in g.get("slots", {}).items():
            name, _, ax = key.rpartition("[")
            out[(name, int(ax.rstrip("]")))] = np.asarray(idx, dtype=np.int64)
    for t in plan.tensors:
        out[(t["name"], int(t["axis"]))] = np.asarray(t["removed"], dtype=np.int64)
    return out


def kept(removed: dict, name: str, axis: int, dense_size: int) -> np.ndarray:
    r = removed.get((name, axis))
    return np.arange(dense_size) if r is None else np.setdiff1d(np.arange(dense_size), r)


def pruned_consumers(model: ir.Model, removed: dict) -> list[Linear]:
    """Linear layers whose contracted input channels lost indices, as the repairs see them
    (`repair_layer`)."""
    return [with_add_bias(lin) for lin in linear_layers(model) if (lin.w.name, lin.w_in_axis) in removed
            and len(removed[(lin.w.name, lin.w_in_axis)])]


def repair_layer(node: ir.Node | None) -> Linear | None:
    """`node` as the repairs see a layer: `linear_of`, a MatMul with the Add of its bias."""
    return with_add_bias(linear_of(node)) if node is not None else None


def writable_bias(lin: Linear) -> bool:
    """The layer's bias can be set: its own (not shared with another layer), or a bias input
    the op can be given (not MatMul's: it has none, and a MatMul without an Add after it
    has nowhere to take one)."""
    return not shared(lin.b) if lin.b is not None else lin.kind != "matmul"


def with_add_bias(lin: Linear | None) -> Linear | None:
    """A MatMul followed by its bias — its output's only use an Add of a 1-D constant with one
    value per output channel, as both PyTorch exporters write nn.Linear, or the bias input of
    the SkipLayerNormalization it feeds (`_skip_norm_bias`) — as one layer with that constant
    for bias; any other layer as it is. MatMul has no bias input, so without
    this the repairs could not move a MatMul layer's offset: bias-compensate skipped it and
    lsq-reconstruct fitted it without an intercept."""
    if lin is None or lin.kind != "matmul" or lin.b is not None:
        return lin
    found = bias_add(lin.node)
    other = found[0].inputs[found[1]] if found is not None else _skip_norm_bias(lin.node)
    if other is None:
        return lin
    b = const_array(other)
    if b is None or b.ndim != 1 or lin.y.shape is None or lin.y_axis != len(lin.y.shape) - 1:
        return lin
    n_out = const_array(lin.w).shape[lin.w_out_axis]
    if b.shape[0] != n_out or not np.issubdtype(b.dtype, np.floating):
        return lin
    return replace(lin, b=other)


def _skip_norm_bias(node: ir.Node) -> ir.Value | None:
    """ONNX Runtime's SkipLayerNormalization computes norm(input + skip + bias): a MatMul
    whose only use is its `input` (an optimized transformer's projection back into the
    stream; the residual is `skip`) has that bias (input 4) for its own."""
    y = node.outputs[0] if node.outputs else None
    uses = list(y.uses()) if y is not None else []
    if y is None or y.is_graph_output() or len(uses) != 1 or uses[0].idx != 0:
        return None
    norm = uses[0].node
    if norm.op_type != "SkipLayerNormalization" or norm.domain != "com.microsoft" or len(norm.inputs) < 5:
        return None
    return norm.inputs[4]


def affected_nodes(model: ir.Model, removed: dict) -> set[int]:
    """Nodes whose outputs change on the *kept* channels: the layers that contract pruned
    channels (their sums lose terms) and everything below them. Ops that only carry
    channels (activations, norms, adds) do not change kept channels by themselves."""
    dirty = {id(lin.node) for lin in pruned_consumers(model, removed)}
    for node in model.graph:  # graph order is topological
        if any(v is not None and v.producer() is not None and id(v.producer()) in dirty for v in node.inputs):
            dirty.add(id(node))
    return dirty


def downstream_layers(model: ir.Model, removed: dict) -> list[Linear]:
    """Linear layers whose inputs or sums change because of the removal."""
    dirty = affected_nodes(model, removed)
    return [with_add_bias(lin) for lin in linear_layers(model) if id(lin.node) in dirty]


def waves(model: ir.Model, targets: list[ir.Node]) -> list[list[ir.Node]]:
    """Targets in topological layers: a node comes after every target upstream of it, so
    it is repaired with its upstream already repaired; a layer is one calibration pass."""
    ids = {id(n) for n in targets}
    depth: dict[int, int] = {}
    for node in model.graph:
        d = 0
        for v in node.inputs:
            p = v.producer() if v is not None else None
            if p is not None and id(p) in depth:
                d = max(d, depth[id(p)] + (1 if id(p) in ids else 0))
        depth[id(node)] = d
    layers: dict[int, list[ir.Node]] = {}
    for n in targets:
        layers.setdefault(depth[id(n)], []).append(n)
    return [layers[k] for k in sorted(layers)]


def value_shapes(model: ir.Model) -> dict[str, tuple]:
    out = {}
    for node in model.graph:
        for v in list(node.inputs) + list(node.outputs):
            if v is not None:
                out[v.name] = tuple(v.shape) if v.shape is not None else None
    return out


@dataclass
class Undo:
    """Records constant changes (and added bias inputs) so a repair can be rolled back."""

    consts: list[tuple[ir.Value, np.ndarray]] = field(default_factory=list)
    inputs: list[tuple[ir.Node, int]] = field(default_factory=list)

    def set(self, v: ir.Value, arr: np.ndarray) -> None:
        self.consts.append((v, const_array(v)))
        set_const_array(v, arr.astype(const_array(v).dtype))

    def add_bias(self, model: ir.Model, node: ir.Node, index: int, arr: np.ndarray) -> ir.Value:
        name = f"{node.name or node.op_type}_repair_bias"
        existing = set(model.graph.initializers) | {o.name for n in model.graph for o in n.outputs}
        k = 0
        base = name
        while name in existing:
            k += 1
            name = f"{base}_{k}"
        arr = np.ascontiguousarray(arr.astype(np.float32))
        v = ir.Value(name=name, const_value=ir.tensor(arr, name=name), shape=ir.Shape(arr.shape),
                     type=ir.TensorType(ir.DataType.FLOAT))
        model.graph.register_initializer(v)
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, v)
        self.inputs.append((node, index))
        return v

    def revert(self, model: ir.Model) -> None:
        for v, arr in reversed(self.consts):
            set_const_array(v, arr)
        for node, index in reversed(self.inputs):
            v = node.inputs[index]
            node.replace_input_with(index, None)
            if index == len(node.inputs) - 1:
                node.resize_inputs(index)
            if v is not None and not v.uses() and v.name in model.graph.initializers:
                model.graph.initializers.pop(v.name)


def output_error(model: ir.Model, dense: ir.Model, calibration, max_batches: int | None = None,
                 dense_outputs: list | None = None) -> tuple[float, list]:
    """Relative L2 error of `model`'s float outputs against `dense`'s on calibration data."""
    from graphprune.allocation.sensitivity import relative_error
    from graphprune.runtime.ort import session

    batches = list(calibration.batches(max_batches))
    s = session(model)
    names = [i.name for i in s.get_inputs()]
    got = [s.run(None, {k: v for k, v in b.items() if k in names}) for b in batches]
    if dense_outputs is None:
        d = session(dense)
        dense_outputs = [d.run(None, {k: v for k, v in b.items() if k in names}) for b in batches]
    return relative_error(dense_outputs, got), dense_outputs


def bias_input_index(lin: Linear) -> int | None:
    """Where a bias goes for this layer (None: the op has no bias input)."""
    return lin.op.bias


def current_bias(lin: Linear, n_out: int) -> np.ndarray:
    return const_array(lin.b).astype(np.float64).reshape(-1) if lin.b is not None else np.zeros(n_out)


def shared(v: ir.Value) -> bool:
    return len(list(v.uses())) > 1


def set_bias(model: ir.Model, lin: Linear, arr: np.ndarray, undo: Undo) -> bool:
    if lin.b is not None:
        if shared(lin.b):
            return False
        undo.set(lin.b, arr)
        return True
    idx = bias_input_index(lin)
    if idx is None:
        return False
    undo.add_bias(model, lin.node, idx, arr)
    return True


def guarded(pass_name: str, model: ir.Model, inp: RepairInputs, apply, *, guard: bool = True,
            eval_batches: int | None = 4, ctx=None) -> bool:
    """Run `apply(undo) -> report dict`; measure the output error before/after; undo if
    it did not go down (guard) or if a shape changed. Record the result in ctx."""
    shapes0 = value_shapes(model)
    before, ref = output_error(model, inp.dense, inp.calibration, eval_batches)
    undo = Undo()
    report = apply(undo) or {}
    changed = bool(undo.consts or undo.inputs)
    after = before
    if changed:
        after, _ = output_error(model, inp.dense, inp.calibration, eval_batches, dense_outputs=ref)
    shapes1 = value_shapes(model)
    bad_shapes = [k for k, s in shapes0.items() if k in shapes1 and shapes1[k] != s]
    reverted = False
    if changed and (bad_shapes or (guard and not after < before)):
        undo.revert(model)
        reverted = True
        log.warning("%s: undone (output error %.4g -> %.4g%s)", pass_name, before, after,
                    f", shapes changed: {bad_shapes[:3]}" if bad_shapes else "")
    else:  # the run's Progress says it (the verbs print it once)
        log.debug("%s: output error on calibration data %.4g -> %.4g", pass_name, before, after)
    entry = {"pass": pass_name, "error_before": round(before, 6), "error_after": round(after, 6),
             "reverted": reverted, "changed": changed, **report}
    if ctx is not None:
        ctx.results.setdefault("repair", []).append(entry)
    return changed and not reverted
