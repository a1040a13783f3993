"""QDQ quantization (QuantizeLinear / DequantizeLinear) as the pruning code sees it.

A QDQ model keeps its float ops and stores each weight as an integer constant read by a
DequantizeLinear: w = (q - zero_point) * scale, with per-tensor or per-axis (per-channel)
scale and zero point. Two things depend on that arithmetic:

* importance reads the float weight a Conv/MatMul sees: `dequantized_const`;
* the oracle's masking. Zeroing an integer weight slice is *not* a zero weight when the
  zero point is not 0 ((0 - zp) * scale). The masked original therefore sets a removed
  slice of a quantized weight to its zero point (`zero_point_fill`), which dequantizes to
  exactly 0, and stays a QDQ model run by the same integer kernels as the pruned one.
  Per-axis scales and zero points in the plan are zeroed as any other slice: a zero scale
  makes the dequantized channel 0 whatever the integer is.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphprune.ir.constants import const_array

STD_DOMAINS = ("", "ai.onnx")


def is_dequantize(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear" and node.domain in STD_DOMAINS


def dq_axis(node: ir.Node, rank: int) -> int:
    a = node.attributes.get("axis")
    axis = 1 if a is None else int(a.value)
    return axis + rank if axis < 0 else axis


def _block_size(node: ir.Node) -> int:
    a = node.attributes.get("block_size")
    return 0 if a is None else int(a.value)


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _per_axis_shape(param: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A scale / zero point shaped to broadcast against the quantized tensor."""
    if param.size == 1:
        return param.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return param.reshape(shape)


def dequantized_const(value: ir.Value | None) -> np.ndarray | None:
    """The float array of a DequantizeLinear output whose inputs are all constants (a QDQ
    weight), or None (another producer, computed inputs, blocked quantization)."""
    node = value.producer() if value is not None else None
    if not is_dequantize(node) or _block_size(node):
        return None
    q, scale = const_array(_input(node, 0)), const_array(_input(node, 1))
    zp_v = _input(node, 2)
    zp = const_array(zp_v) if zp_v is not None else np.zeros((), dtype=np.int64)
    if q is None or scale is None or zp is None:
        return None
    axis = dq_axis(node, q.ndim)
    s = _per_axis_shape(scale.astype(np.float64), q.ndim, axis)
    z = _per_axis_shape(zp.astype(np.float64), q.ndim, axis)
    return ((q.astype(np.float64) - z) * s).astype(scale.dtype)


def zero_point_fill(shape, zero_point: np.ndarray | None, axis: int) -> np.ndarray | None:
    """The array, of the quantized tensor's `shape`, whose every element is its zero point
    (per-tensor or along `axis`): what a masked slice of a quantized weight is set to. None
    when the zero point is absent or 0 everywhere (plain zeroing is already exact)."""
    if zero_point is None or not np.any(zero_point):
        return None
    z = _per_axis_shape(np.asarray(zero_point), len(shape), axis)
    return np.broadcast_to(z, tuple(shape))


def masking_fill(value: ir.Value) -> np.ndarray | None:
    """For a constant of the input model: the zero-point array a masked slice of it must
    take (None: plain zero). Raises ValueError when the constant is read both as a
    quantized weight and otherwise, or by DequantizeLinears with different zero points:
    no single value of a slice is "removed" for all of its readers."""
    uses = list(value.uses())
    dqs = [u.node for u in uses if is_dequantize(u.node) and u.idx == 0]
    readers = []
    for node in dqs:
        zp_v = _input(node, 2)
        zp = const_array(zp_v) if zp_v is not None else None
        if zp_v is not None and zp is None:
            raise ValueError(f"{value.name!r}: its DequantizeLinear's zero point is not a constant")
        readers.append((zp, dq_axis(node, len(const_array(value).shape))))
    return combined_fill(value.name, const_array(value).shape if dqs else (), readers, len(uses) - len(dqs))


def combined_fill(name: str, shape, readers: list, other_uses: int) -> np.ndarray | None:
    """The masking fill of a constant read by DequantizeLinears `readers` ([(zero point or
    None, axis)]) and `other_uses` other ops (see `masking_fill`)."""
    if not readers:
        return None
    if other_uses:
        raise ValueError(f"{name!r} is read by DequantizeLinear and by other ops")
    fills = [zero_point_fill(shape, zp, axis) for zp, axis in readers]
    first = fills[0]
    for f in fills[1:]:
        if (f is None) != (first is None) or (f is not None and not np.array_equal(f, first)):
            raise ValueError(f"{name!r} is dequantized with different zero points")
    return first


def is_quantized_const(value: ir.Value | None) -> bool:
    """Whether `value` is a DequantizeLinear of a constant (a QDQ weight)."""
    node = value.producer() if value is not None else None
    from graphprune.ir.constants import is_constant

    return is_dequantize(node) and is_constant(_input(node, 0)) and not _block_size(node)


def is_quantized_weight(value: ir.Value) -> bool:
    """Whether a constant is the integer data of a QDQ weight (read by DequantizeLinear):
    a parameter of the model, as a float weight is."""
    return any(is_dequantize(u.node) and u.idx == 0 for u in value.uses())
