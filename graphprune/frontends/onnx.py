"""ONNX frontend: load (external data included), infer shapes, fold shape-only subgraphs.

Folding makes Reshape/Split/Slice/Resize arguments visible as constants, which the
dependency rules need to map channel indices exactly. Nothing else is changed: ops the
tool does not know are kept as they are and round-trip unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphprune.errors import FrontendError
from graphprune.frontends import shape_math
from graphprune.gc_pause import gc_paused
from graphprune.input_shapes import static_dim
from graphprune.ir.constants import const_array, is_constant, np_tensor
from graphprune.ir.mapped import load_mapped, save_streamed
from graphprune.ir.shapes import dims_of

log = logging.getLogger(__name__)

MIN_OPSET = 11
# Ops whose all-constant instances are evaluated at load time when the result is an
# integer/bool tensor (shape arithmetic). Folding (De)QuantizeLinear etc. would change
# what the model is.
FOLDABLE = frozenset(
    "Shape Size Gather Unsqueeze Squeeze Concat Slice Cast Reshape Add Sub Mul Div Identity "
    "Range ConstantOfShape Transpose Expand Equal Where Neg Sqrt Floor Ceil ReduceProd Min "
    "Max Abs Not And Or Less Greater Tile Flatten Split".split()
)
MAX_FOLD_ELEMENTS = 1 << 20


@contextlib.contextmanager
def _quiet_reader():
    """Silence onnx_ir's reader warnings while a model is read. A dangling input is logged
    there as free text on stderr; graphprune's own IR check names the same violation in its
    error (one message, with a hint), so the reader's copy is only noise before it."""
    reader = logging.getLogger("onnx_ir.serde")
    level = reader.level
    reader.setLevel(logging.ERROR)
    try:
        yield
    finally:
        reader.setLevel(level)


@gc_paused
def load_onnx(source: str | os.PathLike | bytes, *, fold: bool = True,
              input_shapes: dict[str, list[int]] | None = None) -> ir.Model:
    """Load an ONNX model from a path (or serialized bytes) and normalise it for analysis.

    `input_shapes` (e.g. {"x": [1, 3, 48, 320]}) is the shape the model is analysed at: the
    intermediate values get their dims at it (`analyse_at`), while the inputs,
    outputs and shape math stay dynamic, so a model written from it runs at other sizes."""
    import onnx

    try:
        with _quiet_reader():
            if isinstance(source, (bytes, bytearray)):
                model = ir.serde.deserialize_model(onnx.load_from_string(bytes(source)))
            else:
                path = Path(source)
                if not path.exists():
                    raise FrontendError(f"{path}: no such file")
                if path.is_dir():
                    raise FrontendError(f"{path}: is a directory, expected an .onnx file")
                if path.stat().st_size == 0:
                    raise FrontendError(f"{path}: empty file (0 bytes), not an ONNX model")
                # weights inside the file stay there, memory-mapped (graphprune.ir.mapped)
                model = load_mapped(path) or ir.load(path)
    except FrontendError:
        raise
    except Exception as exc:  # protobuf / onnx raise many types for damaged files
        raise FrontendError(
            f"cannot read ONNX model {source if not isinstance(source, bytes) else '<bytes>'}: "
            f"{type(exc).__name__}: {exc}",
            hint="is the file a complete .onnx model (not truncated, external data beside it)?",
        ) from exc
    if not model.ir_version:  # protobuf parses many non-ONNX bytes as a message with no fields
        raise FrontendError(f"{source if not isinstance(source, (bytes, bytearray)) else '<bytes>'}: "
                            "not an ONNX model (no IR version)",
                            hint="is the file a complete .onnx model (not truncated, not another format)?")
    _check_external_data(model)
    _check_supported(model)
    if input_shapes:
        _check_input_shapes(model, input_shapes)
    normalize(model, fold=fold)
    if input_shapes:
        analyse_at(model, input_shapes)
    if fold:  # analysed, not as-read (the oracle's original): see graphprune.ir.untie
        from graphprune.ir.mutation import restamp_shapes, shapes_current
        from graphprune.ir.untie import untie_shared_zeros

        current = shapes_current(model)
        untie_shared_zeros(model)
        if current:  # copies of constants, each with the shape of its original
            restamp_shapes(model)
    return model


def _check_input_shapes(model: ir.Model, shapes: dict[str, list[int]]) -> None:
    from graphprune.input_shapes import check_user, specs_of_model

    check_user(specs_of_model(model), shapes)


def _check_supported(model: ir.Model) -> None:
    """Refuse, with a reason, what would otherwise load but could not be pruned correctly."""
    from graphprune.errors import VerificationError
    from graphprune.ir.verifier import verify_model

    try:
        verify_model(model, where="input model")
    except VerificationError as exc:
        raise FrontendError(f"malformed graph: {exc}",
                            hint="the graph has a cycle, a dangling input or a duplicate name") from None
    if not model.graph.outputs:
        raise FrontendError("the model has no graph outputs: nothing it computes can be kept or checked",
                            hint="export the model with its outputs")


def _check_external_data(model: ir.Model) -> None:
    missing, outside, seen = set(), set(), set()
    for v in model.graph.initializers.values():
        t = v.const_value
        if not isinstance(t, ir.ExternalTensor) or (str(t.base_dir), t.location) in seen:
            continue  # (hundreds of tensors live in one file: each file is checked once)
        seen.add((str(t.base_dir), t.location))
        # as ONNX Runtime and onnx do: data files live in the model's folder (or below it)
        base = Path(t.base_dir or ".").resolve()
        if not Path(t.path).resolve().is_relative_to(base) or os.path.isabs(t.location):
            outside.add(t.location)
        elif not os.path.exists(t.path):
            missing.add(t.location)
    if outside:
        raise FrontendError(
            f"external data outside the model's folder: {', '.join(sorted(outside))}",
            hint="keep the .data file(s) in the folder of the .onnx file (onnx and ONNX Runtime refuse others)")
    if missing:
        raise FrontendError(
            f"external data file(s) missing: {', '.join(sorted(missing))}",
            hint="keep the .data file(s) next to the .onnx file they belong to")


def _default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def _default_domain_as_empty(model: ir.Model) -> None:
    """The default opset imported as "ai.onnx" (its name in the spec, which ONNX Runtime
    accepts) is imported as "" instead, the same import, so that every reader of the opset
    finds it under one key: read as opset 0, it froze every group of such a model."""
    imports = model.opset_imports
    if "ai.onnx" not in imports:
        return
    version = imports.pop("ai.onnx")
    if imports.setdefault("", version) != version:
        raise FrontendError(f"the model imports the default opset twice, as version {imports['']} ('') and "
                            f"{version} ('ai.onnx')", hint="keep one of the two imports")


@gc_paused
def normalize(model: ir.Model, *, fold: bool = True, warn: bool = True) -> ir.Model:
    """Prepare a loaded model for analysis, in place; returns it for chaining (`warn`:
    report a strict shape inference failure; a copy being re-inferred does not)."""
    _default_domain_as_empty(model)
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise FrontendError(
            f"model uses opset {opset}; graphprune needs opset >= {MIN_OPSET}",
            hint="convert it first: onnx.version_converter.convert_version(model, 13)",
        )
    _drop_initializers_from_inputs(model)
    _initializer_shapes(model)
    _negative_dims_unknown(model)
    _name_unnamed(model)
    from graphprune.frontends.contrib_shapes import fill_contrib_outputs

    infer_shapes(model, warn=warn)
    # each round can make more shapes concrete, and more shape math static; a com.microsoft
    # op or ORT's SimplifiedLayerNormalization (whose shapes onnx does not infer) between
    # standard ops costs a round each, and so does a Reshape below opset 14 (onnx infers
    # Reshape-5/13 only from a constant target: one computed at run time, as the TorchScript
    # exporter writes `x.view(-1, x.size(-1))`, is folded one layer per round)
    rounds = 1000 if any(n.domain == "com.microsoft" or n.op_type == "SimplifiedLayerNormalization"
                         or (n.op_type == "Reshape" and opset < 14) for n in model.graph) else 4
    for _ in range(rounds):
        changed = fold and fold_constants(model)
        if changed:
            remove_unused(model)
        changed = _fill_same_shape_outputs(model) | fill_contrib_outputs(model) | _resolve_reshape_outputs(model) \
            | bool(changed)
        if not changed:
            break
        infer_shapes(model, warn=False)  # a strict failure was already reported once
    if fold:
        from graphprune.frontends.merged_transpose import read_merged_transposes

        if read_merged_transposes(model):  # torch's SDPA key transpose, which froze every head
            remove_unused(model)
    from graphprune.frontends.channel_shapes import complete_channel_shapes

    complete_channel_shapes(model)  # what Conv weights fix where inference gave up
    from graphprune.ir.mutation import SHAPES_KEY, stamp

    model.meta[SHAPES_KEY] = stamp(model)  # the shapes are current until the model changes
    return model


def _resolve_reshape_outputs(model: ir.Model) -> bool:
    """Reshape targets like [batch, seq, -1, 64] (and Expand targets computed at run time)
    leave dims symbolic in onnx's inference even when they are plain numbers: compute them."""
    from graphprune.ir.shape_target import ShapeTarget, resolve_output_dims

    from graphprune.ir.shape_target import resolve_expand_dims

    changed = False
    for node in model.graph:
        if node.op_type not in ("Reshape", "Expand") or node.domain not in ("", "ai.onnx"):
            continue
        x, y = node.inputs[0], node.outputs[0]
        din, dout = dims_of(x), dims_of(y)
        target = ShapeTarget.of(node.inputs[1])
        if dout is None and node.op_type == "Reshape":
            # onnx infers nothing for a Reshape-5/13 whose target is computed at run time
            # (Reshape-14 on: the target's length is the rank, its entries are propagated),
            # and every value after it stays rankless: give it what Reshape-14 would get
            from graphprune.frontends.channel_shapes import reshape_output_dims

            dout = reshape_output_dims(node, din)
            if dout is not None:
                y.shape = ir.Shape(dout)
                changed = True
        if din is None or dout is None:
            continue
        if node.op_type == "Expand":
            new = resolve_expand_dims(din, dout, target)
        elif target is None:
            continue
        else:
            new = resolve_output_dims(din, dout, target)
        if new != dout:
            y.shape = ir.Shape(new)
            changed = True
    return changed


# Ops whose output has the input's shape, for which onnx's inference sometimes gives up
# (GroupNormalization at every opset in onnx 1.23), or which it does not know (ONNX Runtime's
# SimplifiedLayerNormalization, an RMSNorm it registers in the default domain).
_SAME_SHAPE = frozenset({"GroupNormalization", "InstanceNormalization", "LayerNormalization",
                         "BatchNormalization", "Mish", "HardSwish", "Gelu", "MeanVarianceNormalization",
                         "SimplifiedLayerNormalization"})


def _fill_same_shape_outputs(model: ir.Model) -> bool:
    changed = False
    for node in model.graph:
        if node.op_type in _SAME_SHAPE and node.domain in ("", "ai.onnx") and node.outputs:
            x, y = node.inputs[0], node.outputs[0]
            if x is not None and y.shape is None and x.shape is not None:
                y.shape = ir.Shape(list(x.shape))
                if y.dtype is None:
                    y.dtype = x.dtype
                changed = True
    return changed


def _name_unnamed(model: ir.Model) -> None:
    from onnx_ir.passes.common import NameFixPass

    NameFixPass()(model)


def _negative_dims_unknown(model: ir.Model) -> None:
    """Some exporters (Paddle2ONNX) declare a dynamic size as dim_value -1, which the ONNX
    spec does not define and ONNX Runtime reads as unknown. Read it the same way, once, here:
    as an unnamed dynamic dim. Otherwise -1 passes for a static size, and calibration data
    of batch 8 is refused because "the model takes [-1, 3, ?, ?]"."""
    for v in [*model.graph.inputs, *model.graph.outputs]:
        if v.shape is not None and any(isinstance(d, int) and not static_dim(d) for d in v.shape):
            v.shape = ir.Shape([None if isinstance(d, int) and not static_dim(d) else d for d in v.shape])


def _initializer_shapes(model: ir.Model) -> None:
    """A value_info entry without a shape for an initializer (written by some tools, e.g.
    after an Olive pass) left the weight's value shapeless: 0 params, every layer frozen for
    an unknown size. The tensor itself has the dims: they are the value's."""
    for v in model.graph.initializers.values():
        t = v.const_value
        if t is None or t.shape is None:
            continue
        if v.shape is None or any(not static_dim(d) for d in v.shape):
            v.shape = ir.Shape(list(t.shape))
        if v.dtype is None:
            v.dtype = t.dtype


def _drop_initializers_from_inputs(model: ir.Model) -> None:
    """Old exporters list initializers as graph inputs too; treat them as constants."""
    g = model.graph
    keep = [v for v in g.inputs if not (v.const_value is not None and v.name in g.initializers)]
    if len(keep) != len(g.inputs):
        g.inputs.clear()
        g.inputs.extend(keep)
        if model.ir_version and model.ir_version < 4:
            # IR 3 requires every initializer to be a graph input: the written model failed
            # onnx.checker ('w1 in initializer but not in graph input'). IR 4 only lifts that rule.
            model.ir_version = 4


def infer_shapes(model: ir.Model, *, warn: bool = True) -> None:
    """onnx shape inference, merged into the IR. Strict first; if that fails (a type error,
    an op onnx cannot infer), say so and fall back to best effort: ONNX Runtime's own load
    of the model decides later whether the model is usable at all."""
    import onnx

    try:
        with _quiet_reader():  # values of unknown type (an ORT-optimised model's NCHWc) are left out: 30 lines
            proto = weightless_proto(model)
    except Exception as exc:
        raise FrontendError(f"model cannot be serialised: {str(exc).strip().splitlines()[0][:300]}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as strict_exc:  # onnx raises InferenceError, ValidationError, RuntimeError ...
        (log.warning if warn else log.debug)("shape inference (strict) failed: %s",
                                             str(strict_exc).strip().splitlines()[0][:300])
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                         data_prop=True)
        except Exception as exc:
            raise FrontendError(f"shape inference failed: {str(exc).strip().splitlines()[0][:300]}") from None
    _merge_shapes(model, inferred)


# Initializers shape inference only needs the type and dims of: float tensors of more
# elements than any float a shape computation reads (Resize/Upsample scales, Range bounds),
# other tensors larger than any shape (Reshape targets, Slice starts ... stay, for data
# propagation). Every other tensor is left out of the proto inference works on.
_SHAPE_ONLY_FLOAT = 16
_SHAPE_ONLY_OTHER = 1024


def _shape_only(t) -> bool:
    if t is None or isinstance(t, ir.ExternalTensor) or t.dtype is None or t.dtype == ir.DataType.STRING:
        return False  # external data is not read by serialisation anyway
    limit = _SHAPE_ONLY_FLOAT if t.dtype.is_floating_point() else _SHAPE_ONLY_OTHER
    return t.size > limit


def weightless_proto(model: ir.Model):
    """The ModelProto onnx's shape inference runs on, without the weights' data: large
    initializers become typed graph inputs (same dims and dtype), so nothing is copied
    but the graph (serialising a 100 MB model copies it twice more, and inference parses
    it twice again). The model itself is left as it was."""
    import onnx

    graph = model.graph
    swapped = {}
    for name, v in graph.initializers.items():
        if _shape_only(v.const_value):
            swapped[name] = v.const_value
            # a placeholder that serialises as a reference, never as bytes
            v.const_value = ir.ExternalTensor("", None, None, v.const_value.dtype,
                                              shape=v.const_value.shape, name=name)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for name, t in swapped.items():
            graph.initializers[name].const_value = t
    if swapped:
        g = proto.graph
        keep = [t for t in g.initializer if t.name not in swapped]
        moved = [t for t in g.initializer if t.name in swapped]
        infos = [vi for vi in g.value_info if vi.name not in swapped]
        inputs = {vi.name for vi in g.input}
        g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in moved if t.name not in inputs)
        del g.initializer[:]
        g.initializer.extend(keep)
        del g.value_info[:]
        g.value_info.extend(infos)
    return proto


def _proto_values(graph, known: dict) -> dict:
    """Every value_info and output of `graph` and its subgraphs (If/Loop/Scan bodies), by name."""
    for vi in list(graph.value_info) + list(graph.output):
        known.setdefault(vi.name, vi)
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _proto_values(g, known)
    return known


def _nodes_within(graph: ir.Graph):
    """The nodes of `graph` and of its subgraphs (whose shapes the MAC count needs)."""
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if isinstance(attr.value, ir.Graph):
                yield from _nodes_within(attr.value)


def _merge_shapes(model: ir.Model, inferred) -> None:
    known = _proto_values(inferred.graph, {})
    for node in _nodes_within(model.graph):
        for v in node.outputs:
            vi = known.get(v.name)
            if vi is None or not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            if tt.elem_type and v.dtype is None:
                v.dtype = ir.DataType(tt.elem_type)
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
                if v.shape is None or any(isinstance(d, int) for d in dims):
                    v.shape = ir.Shape(dims)


def remove_unused(model: ir.Model) -> None:
    from graphprune.ir.unused import remove_unused as _remove

    _remove(model)


def _eval_node(node: ir.Node, opset: int) -> list[np.ndarray] | None:
    """Evaluate one all-constant node with the ONNX reference evaluator."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [const_array(v) if v is not None else None for v in node.inputs]
    native = shape_math.evaluate(node, inputs, opset)  # small integer shape math, without an evaluator per node
    if native is not None:
        return native
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"o{k}" for k in range(len(node.outputs))]
    proto_node = ir.serde.serialize_node(node)
    del proto_node.input[:]
    proto_node.input.extend(names)
    del proto_node.output[:]
    proto_node.output.extend(outs)
    graph = helper.make_graph(
        [proto_node], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs, strict=True) if a is not None],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        res = ReferenceEvaluator(m).run(None, {n: a for n, a in zip(names, inputs, strict=True) if a is not None})
    except Exception as exc:  # an op the evaluator cannot run: leave it unfolded
        log.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
        return None
    return [np.asarray(r) for r in res]


def _shape_slice(node: ir.Node) -> tuple[list, int, int] | None:
    dims = dims_of(node.inputs[0])
    if dims is None:
        return None
    start = node.attributes["start"].value if "start" in node.attributes else 0
    end = node.attributes["end"].value if "end" in node.attributes else len(dims)
    start = max(0, start + len(dims) if start < 0 else start)
    end = min(len(dims), end + len(dims) if end < 0 else end)
    return dims, start, end


def _fold_value(model: ir.Model, node: ir.Node, old: ir.Value, array: np.ndarray) -> None:
    name = old.name
    old.name = f"{name}__folded"
    new = ir.Value(name=name, const_value=np_tensor(array, name=name),
                   shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    model.graph.register_initializer(new)
    old.replace_all_uses_with(new)


def fold_constants(model: ir.Model) -> bool:
    """Fold Shape of static tensors, Shape→Gather on static dims, and small all-constant
    nodes into initializers. Returns whether anything changed."""
    opset = _default_opset(model)
    graph = model.graph
    outputs = {id(v) for v in graph.outputs}
    changed = False
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in FOLDABLE:
            continue
        if any(id(o) in outputs for o in node.outputs) or not node.outputs:
            continue
        results = None
        if node.op_type == "Shape":
            sl = _shape_slice(node)
            if sl is not None:
                dims, start, end = sl
                picked = dims[start:end]
                if all(isinstance(d, int) for d in picked):
                    results = [np.array(picked, dtype=np.int64)]
                else:
                    _fold_gathers_of_partial_shape(model, node, dims, start)
                    continue
        elif all(v is None or is_constant(v) for v in node.inputs) and any(
            v is not None for v in node.inputs
        ) and not all(o.dtype is not None and o.dtype.is_floating_point() for o in node.outputs):
            # (a float result is not kept, below: a Transpose of a tied 49152x576 token table
            # was evaluated, 0.5 s, and thrown away)
            results = _eval_node(node, opset)
        if results is None or any(r.size > MAX_FOLD_ELEMENTS for r in results):
            continue
        if any(r.dtype.kind not in "iub" for r in results):
            # Float constants stay as computed in the model: plans name tensors of the
            # input model, and rules see through Reshape/Transpose of a weight anyway.
            continue
        for out, arr in zip(node.outputs, results, strict=True):
            _fold_value(model, node, out, arr)
        changed = True
    return changed


def _fold_gathers_of_partial_shape(model: ir.Model, shape_node: ir.Node, dims: list, start: int) -> None:
    """Shape(x) with a dynamic batch: still fold Gather(Shape(x), i) when dim i is static."""
    n = len(dims) - start
    for use in list(shape_node.outputs[0].uses()):
        consumer = use.node
        if use.idx != 0 or consumer.graph is not model.graph:
            continue
        if consumer.op_type == "Gather":
            idx = const_array(consumer.inputs[1])
            if idx is None:
                continue
            picked = [dims[start + int(i) if i >= 0 else len(dims) + int(i)] for i in idx.reshape(-1)]
        elif consumer.op_type == "Slice":
            args = [const_array(v) if v is not None else None for v in consumer.inputs[1:5]]
            if args[0] is None or args[1] is None or (len(consumer.inputs) > 3 and consumer.inputs[3] is not None
                                                      and args[2] is None):
                continue
            step = int(args[3].reshape(-1)[0]) if len(args) > 3 and args[3] is not None else 1
            sel = range(n)[slice(int(args[0].reshape(-1)[0]), int(args[1].reshape(-1)[0]), step)]
            picked = [dims[start + k] for k in sel]
            idx = np.array(picked)
        else:
            continue
        if all(isinstance(d, int) for d in picked):
            arr = np.array(picked, dtype=np.int64).reshape(idx.shape)
            if id(consumer.outputs[0]) not in {id(v) for v in model.graph.outputs}:
                _fold_value(model, consumer, consumer.outputs[0], arr)


@gc_paused
def save_onnx(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write a model atomically: to a temporary file beside the target, then rename.

    Models whose tensors exceed 1.8 GB are written with external data (`<name>.data`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        total = sum(int(np.prod(v.shape.numpy())) * v.dtype.itemsize
                    for v in model.graph.initializers.values()
                    if v.shape is not None and v.shape.is_static() and v.dtype not in (None, ir.DataType.STRING))
        external_data = total > 1_800_000_000
    from graphprune.outputs import mkstemp_beside

    _detach_from(model, [path, path.with_name(path.name + ".data")])
    fd, tmp = mkstemp_beside(path)  # named so a killed run's leftover is recognised and removed
    os.close(fd)
    # Intermediate shapes are analysis aids (some resolved by us); ORT infers its own.
    saved_shapes = [(v, v.shape) for n in model.graph for v in n.outputs
                    if not v.is_graph_output() and v.shape is not None]
    for v, _ in saved_shapes:
        v.shape = None
    from graphprune.ir.untie import retied

    tied = retied(model)  # copies made for analysis that are still equal: one tensor again
    tied.__enter__()
    try:
        if external_data:
            data_name = path.name + ".data"
            tmp_data = Path(tmp).with_name(Path(tmp).name + ".data")
            ir.save(model, tmp, external_data=tmp_data.name)
            # The .onnx refers to the data file by name: give it its final name first.
            os.replace(tmp_data, path.with_name(data_name))
            _rewrite_external_location(tmp, tmp_data.name, data_name)
        else:  # tensor by tensor, from memory or memory maps: no serialised copy of the model
            save_streamed(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        tied.__exit__(None, None, None)
        for v, shape in saved_shapes:
            v.shape = shape


def model_files(path: str | os.PathLike) -> list[Path]:
    """A model file and the external data files it refers to (all inputs of a run: no
    output may land on one of them, see graphprune.outputs)."""
    path = Path(path)
    files = [path]
    if path.is_file():
        files += sorted(path.parent.glob(path.name + "*.data"))
        try:
            files += external_data_files(path)
        except Exception:  # an unreadable model is the loader's to report
            pass
    return files


def external_data_files(path: str | os.PathLike, max_bytes: int = 64 << 20) -> list[Path]:
    """The external data files an .onnx file refers to (an .onnx file that large keeps
    its tensors inside: not parsed)."""
    import onnx

    path = Path(path)
    if path.stat().st_size > max_bytes:
        return []
    proto = onnx.load(str(path), load_external_data=False)
    found = set()
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and e.value:
                found.add(path.parent / e.value)
    return sorted(found)


def _detach_from(model: ir.Model, files: list[Path]) -> None:
    """Read into memory the tensors mapped from `files` (about to be replaced: a memory
    map of the old file would read the new one at the old offsets)."""
    targets = {str(f.resolve()) for f in files if f.exists()}
    for v in model.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor) and str(Path(t.path).resolve()) in targets:
            v.const_value = ir.tensor(np.array(t.numpy()), name=t.name, doc_string=t.doc_string)
            t.release()


def _rewrite_external_location(onnx_path: str, old: str, new: str) -> None:
    import onnx

    proto = onnx.load(onnx_path, load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(proto, onnx_path)


# ---- the model at representative input shapes ---------------------------------------------------
# A folded copy at concrete shapes (`at_shapes`, for MAC counts), and the dynamic model's
# intermediate values annotated with the shapes they have there (`analyse_at`, for analysis).

def at_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> ir.Model:
    """A copy of `model` (tensors shared, not copied) whose symbolic input dims are set from
    `shapes` ({input name: concrete shape}) and whose shapes are re-inferred and folded."""
    copy = model.clone()
    for v in copy.graph.inputs:
        dims = shapes.get(v.name)
        if dims is None or v.shape is not None and len(v.shape) != len(dims):
            continue
        if v.shape is None:  # no declared shape, not even a rank: the given one, in this copy only
            v.shape = ir.Shape([int(n) for n in dims])
            continue
        v.shape = ir.Shape([d if static_dim(d) else int(n) for d, n in zip(v.shape, dims, strict=True)])
    for node in copy.graph:  # stale symbolic intermediate shapes would fight the new ones
        for o in node.outputs:
            o.shape = None if not o.is_graph_output() else o.shape
    return normalize(copy, fold=True, warn=False)


def analyse_at(model, shapes: Mapping) -> int:
    """Give `model`'s intermediate values the shapes they have at `shapes` ({input name:
    concrete shape}, or an InputShapes) where they are symbolic or unknown, so that slots
    frozen only for want of a size are analysed at the representative shape; returns how
    many values gained dims. Graph inputs and outputs keep the dims the model declares, and
    nothing is folded: the model stays dynamic. These shapes are analysis aids —
    `frontends.onnx.save_onnx` writes no intermediate shapes — and a pruned model is proven
    at another size of every dynamic dim by the oracle (`other_sizes`)."""
    shapes = getattr(shapes, "shapes", shapes)  # an InputShapes, or {input: shape}
    if not shapes:
        return 0
    copy = at_shapes(model, shapes)
    known = {v.name: v for v in copy.graph.initializers.values()}
    known.update({v.name: v for n in copy.graph for v in n.outputs if v is not None})
    outer = {id(v) for v in list(model.graph.inputs) + list(model.graph.outputs)}
    gained = 0
    for node in model.graph:
        for v in node.outputs:
            if v is None or id(v) in outer:
                continue
            other = known.get(v.name)
            if other is None or other.shape is None:
                continue
            new = list(other.shape)
            cur = list(v.shape) if v.shape is not None else None
            if cur is not None and (len(cur) != len(new) or any(
                    static_dim(c) and (not static_dim(n) or c != n) for c, n in zip(cur, new, strict=True))):
                continue  # a contradiction (or fewer known dims): the model's own shape stays
            merged = [n if not static_dim(c) else c for c, n in zip(cur, new, strict=True)] if cur is not None else new
            if cur is None or merged != cur:
                v.shape = ir.Shape(merged)
                gained += 1
            if v.dtype is None and other.dtype is not None:  # a shape without a type is not serialised
                v.dtype = other.dtype
    return gained
