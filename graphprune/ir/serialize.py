"""Serialising an IR model to a self-contained proto (external data pulled in)."""
from __future__ import annotations

import onnx_ir as ir


def external_base_dir(model: ir.Model) -> str | None:
    for v in model.graph.initializers.values():
        t = v.const_value
        if isinstance(t, ir.ExternalTensor):
            return t.base_dir
    return None


def to_proto(model: ir.Model):
    """A ModelProto with every tensor's data inline (safe to hand to ORT or to copy)."""
    proto = ir.serde.serialize_model(model)
    base = external_base_dir(model)
    if base is not None:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, base)
    return proto


def clone(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(to_proto(model))


def model_nbytes(model: ir.Model) -> int:
    """Bytes of all tensor data (initializers and Constant nodes), without serialising."""
    import numpy as np

    total = 0
    for v in model.graph.initializers.values():
        if v.shape is not None and v.dtype is not None and all(isinstance(d, int) for d in v.shape):
            total += int(np.prod(list(v.shape), dtype=np.int64)) * v.dtype.itemsize
    for n in model.graph:
        if n.op_type == "Constant" and "value" in n.attributes:
            t = n.attributes["value"].value
            total += int(t.nbytes) if hasattr(t, "nbytes") else 0
    return total


BIG_MODEL_BYTES = 1_500_000_000  # above this, work through files with external data
