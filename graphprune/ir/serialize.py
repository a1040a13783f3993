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
