"""Quantized models as the pruning code sees them: QDQ (QuantizeLinear / DequantizeLinear)
and the integer-op format (QLinearConv, QLinearMatMul, QGemm, QLinearAdd ...).

A QDQ model keeps its float ops and stores each weight as an integer constant read by a
DequantizeLinear: w = (q - zero_point) * scale, with per-tensor or per-axis (per-channel)
scale and zero point. An integer-op model reads the integer constant directly, with its
scale and zero point as inputs of the same op (`QUANTIZED_INPUTS` says which). Two things
depend on that arithmetic:

* importance reads the float weight a Conv/MatMul sees: `dequantized_const` (QDQ),
  `dequantized_weight` (integer ops);
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

from graphprune.ir.constants import STD_DOMAINS, const_array, set_const_array
from graphprune.ir.nbits import dequantized_weight as nbits_dequantized
from graphprune.ir.nbits import is_nbits_weight



def is_dequantize(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear" and node.domain in STD_DOMAINS


def dq_axis(node: ir.Node, rank: int) -> int:
    a = node.attributes.get("axis")
    axis = 1 if a is None else int(a.value)
    return axis + rank if axis < 0 else axis


def _attr_axis(attrs, rank: int) -> int:
    axis = int(attrs.get("axis", 1))
    return axis + rank if axis < 0 else axis


def _first_axis(attrs, rank: int) -> int:
    return 0


def _last_axis(attrs, rank: int) -> int:
    return rank - 1


def _gemm_b_axis(attrs, rank: int) -> int:
    return 0 if int(attrs.get("transB", 0)) else 1


# Op inputs that hold a quantized tensor, (domain, op, input) -> (scale input, zero-point
# input, the axis a per-axis scale runs along, from the node's attributes and the tensor's
# rank): DequantizeLinear (QDQ), and the integer-op (QOperator) formats ONNX Runtime's
# quantize_static writes. The int32 biases of QLinearConv and QGemm are quantized with an
# implied zero point of 0 (no scale input of their own).
QUANTIZED_INPUTS = {
    ("", "DequantizeLinear", 0): (1, 2, _attr_axis),
    ("", "QLinearConv", 0): (1, 2, _first_axis), ("", "QLinearConv", 3): (4, 5, _first_axis),
    ("", "QLinearConv", 8): (None, None, _first_axis),
    ("", "QLinearMatMul", 0): (1, 2, _last_axis), ("", "QLinearMatMul", 3): (4, 5, _last_axis),
    ("com.microsoft", "QGemm", 0): (1, 2, _first_axis), ("com.microsoft", "QGemm", 3): (4, 5, _gemm_b_axis),
    ("com.microsoft", "QGemm", 6): (None, None, _first_axis),
    **{("com.microsoft", op, i): (i + 1, i + 2, _first_axis) for op in ("QLinearAdd", "QLinearMul") for i in (0, 3)},
    # dynamic quantization: the weight's zero point only (its scale is a float Mul after the op)
    ("", "MatMulInteger", 1): (None, 3, _last_axis), ("", "ConvInteger", 1): (None, 3, _first_axis),
}


def quantized_input_of(domain: str, op_type: str, idx: int) -> tuple | None:
    """(scale input, zero-point input, axis function(attrs, rank)) when input `idx` of such
    an op holds a quantized tensor (QUANTIZED_INPUTS), else None."""
    return QUANTIZED_INPUTS.get(("" if domain in STD_DOMAINS else domain, op_type, idx))


def quantized_input(node: ir.Node, idx: int) -> tuple | None:
    """`quantized_input_of` for an IR node."""
    return quantized_input_of(node.domain, node.op_type, idx)


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
    quantized tensor and otherwise, or with different zero points: no single value of a
    slice is "removed" for all of its readers."""
    uses = list(value.uses())
    quant = [(u.node, quantized_input(u.node, u.idx)) for u in uses]
    quant = [(node, q) for node, q in quant if q is not None]
    readers = []
    rank = len(const_array(value).shape) if quant else 0
    for node, (_, zp_i, axis) in quant:
        zp_v = _input(node, zp_i) if zp_i is not None else None
        zp = const_array(zp_v) if zp_v is not None else None
        if zp_v is not None and zp is None:
            raise ValueError(f"{value.name!r}: the zero point {node.op_type} reads it with is not a constant")
        readers.append((zp, axis({k: a.value for k, a in node.attributes.items()}, rank)))
    return combined_fill(value.name, const_array(value).shape if quant else (), readers, len(uses) - len(quant))


def combined_fill(name: str, shape, readers: list, other_uses: int) -> np.ndarray | None:
    """The masking fill of a constant read by DequantizeLinears `readers` ([(zero point or
    None, axis)]) and `other_uses` other ops (see `masking_fill`)."""
    if not readers:
        return None
    if other_uses:
        raise ValueError(f"{name!r} is read both as a quantized tensor and by other ops")
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
    """Whether a constant is the integer data of a quantized weight (read by DequantizeLinear,
    as a QLinearConv / QLinearMatMul / QGemm weight or bias, or as a MatMulNBits' packed
    weight): a parameter of the model, as a float weight is."""
    return any(quantized_input(u.node, u.idx) is not None for u in value.uses()) or is_nbits_weight(value)


def is_integer_op_weight(value: ir.Value) -> bool:
    """Whether a constant is read as a quantized input of an integer op (QLinearConv's
    weight or bias, QLinearAdd's constant operand, MatMulNBits' packed weight ...), not
    through a DequantizeLinear."""
    return any(quantized_input(u.node, u.idx) is not None and not is_dequantize(u.node) for u in value.uses()) \
        or is_nbits_weight(value)


def dequantized_weight(value: ir.Value | None) -> np.ndarray | None:
    """The float weight an integer-op layer (QLinearConv, QLinearMatMul, QGemm, MatMulNBits,
    MatMulInteger, ConvInteger) multiplies with, for its constant integer weight `value`:
    (q - zero_point) * scale along the layer's per-axis (per-block) scale; None when `value`
    is not one (or its scale is computed)."""
    if value is None:
        return None
    if is_nbits_weight(value):  # [N, k_blocks, block_size]: rows on axis 0, blocks on axis 1
        return nbits_dequantized(value)
    for u in value.uses():
        q = quantized_input(u.node, u.idx)
        if q is None or is_dequantize(u.node):
            continue
        if q[0] is None and q[1] is not None:  # MatMulInteger / ConvInteger: the scale is a Mul after the op
            return _as_float(value, u.node, q, _dynamic_weight_scale(u.node))
        if q[0] is not None and u.idx == 3:
            scale = const_array(_input(u.node, q[0]))
            return None if scale is None else _as_float(value, u.node, q, scale)
    return None


def _as_float(value: ir.Value, node: ir.Node, q: tuple, scale: np.ndarray | None) -> np.ndarray | None:
    """(q - zero point) * scale of an integer weight, along the axis its reader (`node`,
    `q` = its QUANTIZED_INPUTS entry) quantizes it on. A scale of neither one value nor one
    per index of that axis (a dynamic weight's scale not found after the op) is left out:
    still right within a per-tensor scale."""
    arr = const_array(value)
    zp_v = _input(node, q[1]) if q[1] is not None else None
    zp = const_array(zp_v) if zp_v is not None else np.zeros((), dtype=np.int64)
    if arr is None or zp is None:
        return None
    axis = q[2]({k: a.value for k, a in node.attributes.items()}, arr.ndim)
    w = arr.astype(np.float64) - _per_axis_shape(zp.astype(np.float64), arr.ndim, axis)
    if scale is not None and scale.size in (1, arr.shape[axis]):
        w = w * _per_axis_shape(scale.astype(np.float64), arr.ndim, axis)
    return w.astype(scale.dtype if scale is not None else np.float32)


def _dynamic_weight_scale(node: ir.Node) -> np.ndarray | None:
    """The constant weight scale ONNX Runtime's quantize_dynamic multiplies an integer op's
    output by: op -> Cast -> Mul(., s), s a constant or Mul(activation scale, constant)."""
    def single_use(v):
        uses = list(v.uses()) if v is not None else []
        return uses[0] if len(uses) == 1 else None

    cast = single_use(node.outputs[0])
    mul = single_use(cast.node.outputs[0]) if cast is not None and cast.node.op_type == "Cast" else None
    if mul is None or mul.node.op_type != "Mul":
        return None
    other = mul.node.inputs[1 - mul.idx]
    found = const_array(other)
    if found is not None:
        return found
    p = other.producer() if other is not None else None
    if p is None or p.op_type != "Mul":
        return None
    consts = [a for a in (const_array(v) for v in p.inputs) if a is not None]
    return consts[0] if len(consts) == 1 else None


def qdq_nodes(model: ir.Model) -> list[ir.Node]:
    """The QuantizeLinear / DequantizeLinear nodes of `model`'s main graph."""
    return [n for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in STD_DOMAINS]


def qdq_scales(model: ir.Model) -> list[ir.Value]:
    """The constant float scales of `qdq_nodes`, each once."""
    found: dict[int, ir.Value] = {}
    for node in qdq_nodes(model):
        scale = _input(node, 1)
        arr = const_array(scale)
        if arr is not None and arr.dtype.kind == "f":
            found.setdefault(id(scale), scale)
    return list(found.values())


def power_of_two_scales(model: ir.Model) -> int:
    """Round every constant float scale of a QuantizeLinear / DequantizeLinear in `model`
    (`qdq_scales`) to the nearest power of two, in place (a zero scale stays zero); returns
    how many were changed. The oracle's exact view of a QDQ model: with power-of-two scales
    every dequantized value is an integer times a power of two, so the float Conv / MatMul
    sums ONNX Runtime forms from them are exact whatever their order. At the model's own
    scales the sums round, and a pruned layer, summing fewer (zero) terms in another order,
    can land on the other side of a QuantizeLinear's rounding boundary: a whole quantisation
    step apart from the masked original with the plan exactly right. The rounding forgets
    the scales' low bits: whoever relies on it checks the scales themselves."""
    changed = 0
    for scale in qdq_scales(model):
        arr = const_array(scale)
        with np.errstate(divide="ignore"):
            exponent = np.round(np.log2(np.abs(arr.astype(np.float64))))
        rounded = np.asarray(np.sign(arr) * np.exp2(exponent), dtype=arr.dtype).reshape(arr.shape)
        if not np.array_equal(rounded, arr):
            set_const_array(scale, rounded)
            changed += 1
    return changed
