"""Uniform access to constant tensors: initializers and `Constant` node outputs alike.

Real models store weights either way (PP-OCR keeps every weight in Constant nodes), and
the plan names a tensor by its value name in the input model, so both forms are kept as
they are instead of being converted.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

STD_DOMAINS = ("", "ai.onnx")  # the default (ONNX) domain, by either of its names
_CONST_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def const_producer(value: ir.Value) -> ir.Node | None:
    """The Constant node producing `value` (main-graph or subgraph), if any."""
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return node
    return None


def values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    """Every initializer and node output of the main graph by name: where a plan's tensor
    names (initializers or Constant outputs) are looked up."""
    values = dict(model.graph.initializers)
    for node in model.graph:
        for o in node.outputs:
            values.setdefault(o.name, o)
    return values


def is_constant(value: ir.Value | None) -> bool:
    if value is None:
        return False
    if value.const_value is not None and not value.is_graph_input():
        return True
    node = const_producer(value)
    return node is not None and any(k in node.attributes for k in _CONST_ATTRS)


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array of a constant value, or None when the value is not constant."""
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        t = value.const_value
        if isinstance(t, ir.ExternalTensor):
            # an owned copy, and the memory map let go: touching every weight of a large
            # model must not keep all of it resident
            arr = np.array(t.numpy())
            t.release()
            return arr
        return t.numpy()
    node = const_producer(value)
    if node is None:
        return None
    for key in _CONST_ATTRS:
        attr = node.attributes.get(key)
        if attr is None:
            continue
        if key == "value":
            return attr.value.numpy()
        if key == "value_float":
            return np.array(attr.value, dtype=np.float32)
        if key == "value_floats":
            return np.array(list(attr.value), dtype=np.float32)
        if key == "value_int":
            return np.array(attr.value, dtype=np.int64)
        return np.array(list(attr.value), dtype=np.int64)
    return None


def np_tensor(array: np.ndarray, name: str | None = None) -> ir.TensorProtocol:
    """`ir.tensor(array, name=name)` without its runtime Protocol checks (about 45 us a call
    against 4): a model's load folds hundreds of constants and its surgery slices hundreds."""
    if type(array) is np.ndarray:
        return ir.Tensor(array, name=name)
    return ir.tensor(array, name=name)


def set_const_array(value: ir.Value, array: np.ndarray) -> None:
    """Replace a constant's data in place, keeping its name, its storage form and its rank
    (np.ascontiguousarray alone makes a 0-d scalar 1-d)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    tensor = np_tensor(array, name=value.name)
    node = const_producer(value)
    if node is not None and not (value.const_value is not None and value.is_initializer()):
        for key in _CONST_ATTRS:
            node.attributes.pop(key, None)
        node.attributes["value"] = ir.AttrTensor("value", tensor)
        value.const_value = tensor
    else:
        value.const_value = tensor
    value.shape = ir.Shape(array.shape)
    value.dtype = tensor.dtype
