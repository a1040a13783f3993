"""Serialising an IR model to a self-contained proto (external data pulled in)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir


def external_base_dir(model: ir.Model) -> str | None:
    for v in model.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            return t.base_dir
    return None


def to_proto(model: ir.Model):
    """A ModelProto with every tensor's data inline, as `save_onnx` writes the model: the
    intermediate values keep their types but not their shapes. Those shapes are analysis
    aids (`frontends.onnx.analyse_at` gives them the dims of the representative shape), and
    ONNX Runtime folds static dims it is told into its fused kernels (a MatMul + Add becomes
    a Gemm behind a Reshape to the told size), so a session built with them fails on a batch
    of any other size: calibration batches, the oracle's other sizes, a user's inputs."""
    proto = ir.serde.serialize_model(model)
    # an initializer's entry would be left typed but shapeless, and onnx's shape inference
    # takes that over the tensor's own dims: it inferred 2 of 42 intermediate shapes of the
    # Olive pass's model (the initializer itself holds its type and dims)
    inits = {t.name for t in proto.graph.initializer}
    kept = [vi for vi in proto.graph.value_info if vi.name not in inits]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    for vi in proto.graph.value_info:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    base = external_base_dir(model)
    if base is not None:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, base)
    return proto


def clone(model: ir.Model) -> ir.Model:
    """An independent copy of `model`: nodes and values are new objects; tensors that cannot
    change (read-only: memory-mapped, parsed from a proto, or a read-only array) are shared
    instead of copied, every other tensor is copied (through a proto, as before)."""
    copy = model.clone()
    for graph in copy.graphs():
        for v in graph.initializers.values():
            if v.const_value is not None and not _immutable(v.const_value):
                v.const_value = _copied(v.const_value)
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and not _immutable(attr.value):
                    node.attributes[name] = ir.AttrTensor(name, _copied(attr.value), doc_string=attr.doc_string)
                elif attr.type == ir.AttributeType.TENSORS and not all(_immutable(t) for t in attr.value):
                    node.attributes[name] = ir.AttrTensors(name, [_copied(t) for t in attr.value],
                                                           doc_string=attr.doc_string)
    return copy


def _immutable(t) -> bool:
    if isinstance(t, (ir.ExternalTensor, ir.serde.TensorProtoTensor)):
        return True
    raw = getattr(t, "raw", None)
    return type(t) is ir.Tensor and isinstance(raw, np.ndarray) and not raw.flags.writeable


def _copied(t):
    return ir.serde.deserialize_tensor(ir.serde.serialize_tensor(t))


def model_nbytes(model: ir.Model) -> int:
    """Bytes of all tensor data (initializers and Constant nodes), without serialising."""
    import numpy as np

    from graphprune.ir.untie import ties_back

    tied = {m.name for m, _ in ties_back(model)}  # one tensor again in the written file
    total = 0
    for v in model.graph.initializers.values():
        if v.name in tied:
            continue
        if v.shape is not None and v.dtype is not None and all(isinstance(d, int) for d in v.shape):
            total += int(np.prod(list(v.shape), dtype=np.int64)) * v.dtype.itemsize
    for n in model.graph:
        if n.op_type == "Constant" and "value" in n.attributes:
            t = n.attributes["value"].value
            total += int(t.nbytes) if hasattr(t, "nbytes") else 0
    return total


BIG_MODEL_BYTES = 1_500_000_000  # above this, work through files with external data
